"""`fp8` (W8A8, float8 e4m3, Hopper / Ada GPUs): every body projection y = x W^T + b (W: [N, K]) becomes one
`torch._scaled_mm` with the scales applied in the GEMM epilogue, the bias fused, bfloat16 out. Everything
else (layer norms, attention, the head) runs in bfloat16. 448 is e4m3's largest finite value.

    activations: static (calibrated once, per tensor):
        a = max over calibration batches of max_{t,k} |x[t, k]|,     s_x = a / 448                     (1)
        xq = e4m3(clamp(x / s_x, -448, 448))     a multiply and a saturating cast: torch.compile fuses
                                                 them into the kernel that produced x (layer norm, GELU)
    weights (per tensor, to pair with a per-tensor activation scale in the epilogue):
        s_w = max_{j,k} |W[j, k]| / 448,        Wq = e4m3(W / s_w)                                      (2)
    activations: dynamic (per row, every pass), weights per output row:
        s_x[t] = max_k |x[t, k]| / 448,  s_w[j] = max_k |W[j, k]| / 448                                (3)
    product:  y[t, j] = s_x[.] * s_w[.] * sum_k xq[t, k] Wq[j, k] + b[j]     (fp32 accumulation)          (4)

e4m3 keeps 3 mantissa bits: |v - e4m3(v)| <= 2^-4 |v| for |v| in the normal range (>= 2^-6), so
|y - y_ref| <= sum_k |x_k W_jk| ((1 + 2^-4)^2 - 1) + the subnormal floor + bf16 rounding of y (tests use it).
Calibration rows come from the validation split (calibration.py), never the test split. `keep_bf16` names
projections (substrings of their module names) that stay in bfloat16; how many ran in fp8 is counted
(w8a8.py: the calibration, the artifact and the count, shared with int8_static).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from . import w8a8
from ..calibration import Calibration
from ..config import check
from .registry import Scheme

WEIGHTS_FILE = "model.fp8.safetensors"
E4M3_MAX = 448.0
ROWS_MULTIPLE = 16  # torch._scaled_mm wants both dimensions of its first operand divisible by 16
FP8 = getattr(torch, "float8_e4m3fn", None)


@dataclass
class Fp8Options(w8a8.CalibratedOptions):
    activations: Literal["static", "dynamic"] = "static"
    fast_accum: bool = False  # cuBLASLt's fast fp8 accumulation (faster, less exact)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(not self.fuse or self.activations == "static", "fuse", "[] with activations: dynamic (fusion needs static scales)",
              self.fuse)


def available(options: Fp8Options, device: torch.device) -> str | None:
    if FP8 is None or not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no float8 matrix product"
    if device.type != "cuda":
        return "float8 matrix products need a CUDA GPU with compute capability >= 8.9 (H100, H200, L4)"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"float8 matrix products need compute capability >= 8.9; this GPU has {torch.cuda.get_device_capability(device)}"
    return None


def to_e4m3(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3(clamp(t / scale, -448, 448)): saturating, as formulas (1)-(3) say."""
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


def absmax_scale(t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """max |t| / 448 over everything (dim None) or along `dim` (keepdim); 1 where that max is 0."""
    a = t.detach().abs().float().amax() if dim is None else t.detach().abs().float().amax(dim=dim, keepdim=True)
    return torch.where(a > 0, a / E4M3_MAX, torch.ones_like(a))


class Fp8Linear(nn.Module):
    """y = x W^T + b as one `torch._scaled_mm` (formulas (1)-(4)); bfloat16 in and out."""

    ptqflow_projection = True  # structure.py counts it as a body projection

    def __init__(self, in_features: int, out_features: int, options: Fp8Options, device: torch.device | None = None):
        super().__init__()
        static = options.activations == "static"
        self.in_features, self.out_features, self.static, self.fast_accum = in_features, out_features, static, options.fast_accum
        self.code = "fp8" if static else None  # static: takes e4m3 codes of x / s_x as input (fusion.py)
        self.code_dtype = FP8
        self.register_buffer("weight_fp8", torch.zeros(out_features, in_features, dtype=FP8))
        self.register_buffer("weight_scale", torch.ones(() if static else (1, out_features), dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32))  # static: s_x of formula (1)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        pad = (-rows) % ROWS_MULTIPLE
        if pad:
            x2 = torch.nn.functional.pad(x2, (0, 0, 0, pad))
        scale = self.input_scale if self.static else absmax_scale(x2, dim=1)
        codes = x2 if x2.dtype == FP8 else to_e4m3(x2, scale)  # already codes: a fused producer wrote them
        y = torch._scaled_mm(codes, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             bias=self.bias, out_dtype=torch.bfloat16, use_fast_accum=self.fast_accum)
        return y[:rows].reshape(*lead, self.out_features).to(torch.bfloat16 if x.dtype == FP8 else x.dtype)

    def quantize_input(self, x2: torch.Tensor) -> torch.Tensor:
        return to_e4m3(x2, self.input_scale)

    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight_fp8, self.weight_scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, static={self.static}"


def encode(w: torch.Tensor, options: Fp8Options) -> dict[str, torch.Tensor]:
    """Formula (2) (static: one scale) or (3) (dynamic: one scale per output row) of a weight W [N, K]."""
    if options.activations == "static":
        s_w = absmax_scale(w)
        return {"weight_fp8": to_e4m3(w, s_w), "weight_scale": s_w}
    s_w = absmax_scale(w, dim=1)
    return {"weight_fp8": to_e4m3(w, s_w), "weight_scale": s_w.reshape(1, -1)}


def _kernel(options: Fp8Options, device: torch.device | None = None) -> str:
    return "torch._scaled_mm" + (" fast-accum" if options.fast_accum else "")


CODEC = w8a8.Codec("float8 e4m3", WEIGHTS_FILE, E4M3_MAX, encode, Fp8Linear, _kernel)


def quantize(src_dir: Path, out_dir: Path, options: Fp8Options, calibration: Calibration) -> dict:
    return w8a8.quantize(src_dir, out_dir, options, calibration, CODEC)


def load(artifact_dir: Path, options: Fp8Options, device: torch.device) -> torch.nn.Module:
    return w8a8.load(artifact_dir, options, device, CODEC)


SCHEME = Scheme("fp8", Fp8Options, quantize, load,
                "W8A8 float8 e4m3 through torch._scaled_mm (static calibrated or dynamic per-row activation scales)",
                available=available, calibrates=True)
