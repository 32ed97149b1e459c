"""`int8_static` (W8A8): int8 weights and int8 activations with a *calibrated* per-tensor activation
scale, so quantizing an activation costs a multiply, a round and a cast that torch.compile fuses into the
kernel producing it (no absmax pass at run time, unlike `int8_dynamic`). Each body projection
y = x W^T + b (W: [N, K]) becomes:

    weights, per output channel j:  s_w[j] = max_k |W[j, k]| / 127,   Wq = round(W / s_w) in [-127, 127]     (1)
    activations, per tensor:        s_x = a / 127 (a: w8a8.py formula (1), validation rows),
                                    xq = clamp(round(x / s_x), -127, 127)                                  (2)
    product:                        y[t, j] = bf16( s_x s_w[j] sum_k xq[t, k] Wq[j, k] + b[j] )            (3)

(3) runs in one kernel (`kernel: triton`, CUDA, int8_gemm.py: exact int32 accumulation, scale, bias and cast in
the epilogue) or as `torch._int_mm` then a float rescale (`kernel: int_mm`: the int32 result goes through
memory; on a CPU this is oneDNN's int8 GEMM, VNNI / AMX where the CPU has them). `kernel: auto` = triton on
CUDA, int_mm on a CPU. Within the calibrated range |x - s_x xq| <= s_x / 2 and |W - s_w Wq| <= s_w / 2
elementwise; activations beyond it saturate at +-127 s_x, and one outlier channel stretches s_x for every
other channel of its tensor: the per-tensor scheme's known weakness on pretrained transformers (the calibrated
ranges, largest first, are recorded as `input_absmax`). Everything else (layer norms, attention, the head)
runs in `dtype` (bfloat16, or float32 to see the int8 products' effect alone); in (3) "bf16" is then that dtype;
`keep_bf16` leaves named projections in it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from . import w8a8
from ..calibration import Calibration
from .common import absmax_int8_rows
from .registry import Scheme

WEIGHTS_FILE = "model.int8static.safetensors"
INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA wants more than 16 rows


@dataclass
class Int8StaticOptions(w8a8.CalibratedOptions):
    activations: Literal["static"] = "static"  # per-tensor scales calibrated once (int8_dynamic: per token at run time)
    kernel: Literal["auto", "triton", "int_mm"] = "auto"  # auto: triton on CUDA, int_mm on a CPU
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # everything that is not an int8 product


def resolved_kernel(options: Int8StaticOptions, device: torch.device) -> str:
    if options.kernel != "auto":
        return options.kernel
    return "triton" if device.type == "cuda" else "int_mm"


def available(options: Int8StaticOptions, device: torch.device) -> str | None:
    kernel = resolved_kernel(options, device)
    if device.type != "cuda" and kernel == "triton":
        return "int8 static W8A8 with kernel: triton runs its int8 GEMM on a CUDA GPU; this machine has none (kernel: int_mm runs on a CPU)"
    if kernel == "triton":
        from ..int8_gemm import missing

        return missing()
    return None


class Int8StaticLinear(nn.Module):
    """y = x W^T + b by formulas (1)-(3); bfloat16 in and out."""

    ptqflow_projection = True  # structure.py counts it as a body projection

    def __init__(self, in_features: int, out_features: int, options: Int8StaticOptions, device: torch.device | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.kernel = resolved_kernel(options, device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.out_dtype = getattr(torch, options.dtype)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=self.out_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        xq = torch.round(x2.float() / self.input_scale).clamp(-127, 127).to(torch.int8)  # formula (2)
        if self.kernel == "triton":
            from ..int8_gemm import int8_gemm_rescale

            y = int8_gemm_rescale(xq, self.weight_int8, self.input_scale, self.weight_scale, self.bias)
        else:
            rows = xq.shape[0]
            if rows < INT_MM_MIN_ROWS and xq.is_cuda:
                xq = torch.nn.functional.pad(xq, (0, 0, 0, INT_MM_MIN_ROWS - rows))
            acc = torch._int_mm(xq, self.weight_int8.t())[:rows]
            y = (acc.float() * (self.input_scale * self.weight_scale) + self.bias.float()).to(self.out_dtype)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def encode(w: torch.Tensor, options: Int8StaticOptions) -> dict[str, torch.Tensor]:
    """Formula (1) of a weight W [N, K]."""
    q, s_w = absmax_int8_rows(w)
    return {"weight_int8": q, "weight_scale": s_w}


def _kernel(options: Int8StaticOptions, device: torch.device | None = None) -> str:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if resolved_kernel(options, device) == "triton":
        return "Triton int8 GEMM, rescale + bias fused"
    return "torch._int_mm + float rescale" + (" (oneDNN int8 GEMM on the CPU)" if device.type == "cpu" else "")


CODEC = w8a8.Codec("int8", WEIGHTS_FILE, 127.0, encode, Int8StaticLinear, _kernel)


def quantize(src_dir: Path, out_dir: Path, options: Int8StaticOptions, calibration: Calibration) -> dict:
    return w8a8.quantize(src_dir, out_dir, options, calibration, CODEC)


def load(artifact_dir: Path, options: Int8StaticOptions, device: torch.device) -> nn.Module:
    return w8a8.load(artifact_dir, options, device, CODEC)


SCHEME = Scheme("int8_static", Int8StaticOptions, quantize, load,
                "W8A8 int8 with calibrated per-tensor activation scales; int8 GEMM (Triton with the rescale fused on CUDA, "
                "torch._int_mm on a CPU)",
                available=available, calibrates=True)
