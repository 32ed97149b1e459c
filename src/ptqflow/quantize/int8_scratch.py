"""`int8_scratch`: per-tensor affine INT8 quantization written by hand (the report's section 2.4.1).

Every floating-point parameter tensor W (embeddings, projections, layer norms, the head) is mapped
independently to int8 with qmin = -128, qmax = 127:

    lo = min(min(W), 0),  hi = max(max(W), 0)       (the range is widened to contain 0, as PyTorch's
                                                      MinMaxObserver does, so the zero point is a valid
                                                      int8 value and 0.0 is represented exactly)
    scale      = (hi - lo) / (qmax - qmin)                                  (1)
    zero_point = clamp(round(qmin - lo / scale), qmin, qmax)                (2)
    q          = clamp(round(W / scale + zero_point), qmin, qmax)           (3)
    W_deq      = (q - zero_point) * scale                                   (4)

so |W - W_deq| <= scale / 2 for every element (plus float32 rounding of W_deq). The statistics are
computed in float64 so that huge ranges (|W| near float32's maximum) do not overflow, and `scale` is
rounded to float32 *before* q is computed, so the bound holds for the scale that is stored.

A constant tensor (max(W) == min(W) = c) has no range: it is stored as q = sign(c), zero_point = 0,
scale = |c| (or 1 when c = 0), which round-trips exactly and never divides by zero.

The artifact holds q (int8) plus one float32 scale and one int32 zero point per tensor, in safetensors
(about a quarter of the FP32 file). `load` dequantizes once at load time, as the report does: the model
then runs in float32 (`runtime_dtype`), so it saves disk, not run-time memory or time.

`embeddings: int8 | int4` stores the embedding tables (input, and learned position / token type where the
architecture has them) instead per row / per group of 32 (embedding.py) and keeps them quantized in memory; `keep` (default) treats them like every other tensor.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import PtqflowError
from .common import load_finetuned, read_weights, skeleton
from .embedding import EmbeddingMode, attach_embeddings, describe, quantize_embeddings, split_embedding_tensors
from .registry import Scheme

QMIN, QMAX = -128, 127
WEIGHTS_FILE = "model.int8.safetensors"
FORMAT = "ptqflow-int8-affine-per-tensor"


@dataclass
class Int8ScratchOptions:
    embeddings: EmbeddingMode = "keep"  # keep: per-tensor like the rest (the report); int8 / int4: embedding.py


def quantize_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (int8, shape of w), scale (float32, shape [1]) and zero_point (int32, shape [1]) by formulas (1)-(3)."""
    w64 = w.detach().to(torch.float64)
    if w64.numel() == 0:
        return torch.zeros(w.shape, dtype=torch.int8), torch.ones(1), torch.zeros(1, dtype=torch.int32)
    if not torch.isfinite(w64).all():
        raise PtqflowError("cannot quantize a tensor holding NaN or infinity")
    w_min, w_max = w64.min().item(), w64.max().item()
    if w_min == w_max:  # constant tensor: exact, no division by a zero range
        c = w_min
        scale = abs(c) if c != 0 else 1.0
        q = torch.full(w.shape, int(torch.sign(torch.tensor(c)).item()), dtype=torch.int8)
        return q, torch.tensor([scale], dtype=torch.float32), torch.zeros(1, dtype=torch.int32)
    lo, hi = min(w_min, 0.0), max(w_max, 0.0)
    scale = float(torch.tensor((hi - lo) / (QMAX - QMIN), dtype=torch.float32))  # stored precision
    if scale == 0.0:  # range below float32's smallest step: every value rounds to 0 anyway
        scale = float(torch.finfo(torch.float32).tiny)
    zero_point = int(min(max(round(QMIN - lo / scale), QMIN), QMAX))
    q = torch.clamp(torch.round(w64 / scale + zero_point), QMIN, QMAX).to(torch.int8)
    return q, torch.tensor([scale], dtype=torch.float32), torch.tensor([zero_point], dtype=torch.int32)


def dequantize_tensor(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """W_deq = (q - zero_point) * scale, formula (4), computed in float64 and returned as `dtype`."""
    return ((q.to(torch.float64) - zero_point.to(torch.float64)) * scale.to(torch.float64)).to(dtype)


def quantize_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every floating-point parameter of `model` as `name`, `name::scale`, `name::zero_point` tensors."""
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        q, scale, zp = quantize_tensor(param)
        out[name], out[f"{name}::scale"], out[f"{name}::zero_point"] = q.contiguous(), scale, zp
    return out


def dequantize_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = [k for k in tensors if "::" not in k]
    return {n: dequantize_tensor(tensors[n], tensors[f"{n}::scale"], tensors[f"{n}::zero_point"]) for n in names}


def quantize(src_dir: Path, out_dir: Path, options: Int8ScratchOptions) -> dict:
    model = load_finetuned(src_dir)
    n_parameters = model.num_parameters()
    embeddings = quantize_embeddings(model, options.embeddings, torch.float32)
    floating = [n for n, p in model.named_parameters() if p.is_floating_point()]
    state = quantize_state(model)
    quantized = [k for k in state if "::" not in k]
    assert quantized == floating, "every floating-point parameter tensor must be quantized"
    state.update(embeddings)
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": FORMAT, "tensors": str(len(quantized))})
    shutil.copy(src_dir / "config.json", out_dir / "config.json")
    kept = "" if options.embeddings == "keep" else f"; {describe(options.embeddings)}, kept quantized in memory"
    return {
        "runtime_dtype": f"float32 (int8 weights dequantized once at load time){kept}",
        "quantized_tensors": len(quantized) + len(embeddings) // 2,
        "parameter_tensors": len(floating) + len(embeddings) // 2,
        "n_parameters": n_parameters,
    }


def load(artifact_dir: Path, options: Int8ScratchOptions, device: torch.device) -> torch.nn.Module:
    path = artifact_dir / WEIGHTS_FILE
    tensors, _ = read_weights(path)
    model = skeleton(artifact_dir)
    embeddings, per_tensor = split_embedding_tensors(tensors)
    attach_embeddings(model, options.embeddings, embeddings, torch.float32)
    missing, unexpected = model.load_state_dict({**dequantize_state(per_tensor), **embeddings}, strict=False)
    if missing or unexpected:
        raise PtqflowError(f"{path}: does not match the model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device)


SCHEME = Scheme("int8_scratch", Int8ScratchOptions, quantize, load, "per-tensor affine INT8, hand-written, dequantized at load")
