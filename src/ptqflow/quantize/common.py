"""What the schemes share: loading the fine-tuned model, counting GPT-2's Conv1D projections, sizes."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2ForSequenceClassification
from transformers.pytorch_utils import Conv1D

from ..errors import PtqflowError
from ..io import dir_size_bytes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def absmax_int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row r of a 2-D tensor t: s[r] = max_k |t[r, k]| / 127 (1 for an all-zero row),
    q[r, k] = clamp(round(t[r, k] / s[r]), -127, 127); returns q (int8) and s (float32, [rows]).
    Then |t - q * s| <= s / 2 elementwise."""
    t = t.detach().to(torch.float32)
    scale = t.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(t / scale[:, None]), -127, 127).to(torch.int8), scale


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an artifact's safetensors file; a damaged file is one PtqflowError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise PtqflowError(f"{path}: not a readable safetensors file ({exc})") from None


def load_finetuned(src_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> GPT2ForSequenceClassification:
    """The fine-tuned model; a damaged or truncated weights file is reported, never loaded as garbage."""
    try:
        model = GPT2ForSequenceClassification.from_pretrained(str(src_dir), dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - safetensors/transformers raise many types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PtqflowError(f"{src_dir}: cannot load the fine-tuned model ({type(exc).__name__}: {first})") from None
    return model.to(device).eval()


def count_conv1d(model: torch.nn.Module) -> int:
    """GPT-2's attention and MLP projections are transformers' Conv1D (4 per block: c_attn, c_proj, c_fc, mlp.c_proj)."""
    return sum(isinstance(m, Conv1D) for m in model.modules())


def conv1d_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the Conv1D projections, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, Conv1D)]


def conv1d_to_linear(model: torch.nn.Module) -> list[str]:
    """Replace every Conv1D (y = x W + b, W stored [in, out]) by the equal nn.Linear (weight W^T); returns their names."""
    names = conv1d_names(model)
    for name in names:
        conv = model.get_submodule(name)
        k, n = conv.weight.shape
        linear = torch.nn.Linear(k, n, dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            linear.bias.copy_(conv.bias)
        replace_module(model, name, linear)
    return names


def replace_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def weights_bytes(artifact_dir: Path) -> int:
    """Bytes of the weight files (*.safetensors) of an artifact: config and metadata JSON are not counted."""
    return dir_size_bytes(artifact_dir, "*.safetensors")


def runtime_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
