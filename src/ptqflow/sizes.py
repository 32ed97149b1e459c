"""Sizes of a variant, units explicit: bytes of its weight files and bytes it holds in memory once loaded."""

from __future__ import annotations

import resource
import sys

import torch


def size_record(n_bytes: int) -> dict:
    """A size in bytes, MiB (2**20) and MB (10**6), units explicit."""
    return {"bytes": int(n_bytes), "MiB": round(n_bytes / 2**20, 4), "MB": round(n_bytes / 1e6, 4)}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's quantized weights) is counted by its inner tensors."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def memory_footprint(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as held in memory, plus what modules hold outside them
    (`extra_memory_bytes()`, e.g. fbgemm's packed int8 weights)."""
    base = sum(tensor_bytes(t) for t in [*model.parameters(), *model.buffers()])
    return base + sum(int(m.extra_memory_bytes()) for m in model.modules() if hasattr(m, "extra_memory_bytes"))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (int8 models may hold only buffers)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
