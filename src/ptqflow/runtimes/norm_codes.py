"""One GPU kernel: a LayerNorm (or RMSNorm) whose output is written directly as the next projection's 8-bit codes
(Triton), for the fused W8A8 layers (quantize/fusion.py): the normalized activation is never written in half
precision and read again to be quantized.

Per row x [D] (any float dtype, computed in float32):

    LayerNorm:  y = (x - mean(x)) / sqrt(var(x) + eps) * w + b        var(x) = mean((x - mean x)^2)      (1)
    RMSNorm:    y = x / sqrt(mean(x^2) + eps) * w                                                          (2)
    codes:      e4m3(clamp(y / s, -448, 448))   or   int8(clamp(rint(y / s), -127, 127))                  (3)

with s the consuming projection's calibrated static input scale (0-d float32, read from memory so that CUDA
graphs replay with it). Registered as the custom operator `ptqflow::norm_codes`.
"""

from __future__ import annotations

import functools

import torch

from .gemm8 import OUT_DTYPES, OUTPUTS, codes  # noqa: F401 - OUTPUTS: the same numbering (1 e4m3, 2 int8 codes)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    @triton.jit
    def norm_codes_kernel(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, M, D, stride_x, stride_y, eps,
                          RMS: tl.constexpr, HAS_BIAS: tl.constexpr, OUT: tl.constexpr,
                          BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_D)
        inside = (rows[:, None] < M) & (cols[None, :] < D)
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        if RMS:
            var = tl.sum(x * x, axis=1) / D
            y = x * (1.0 / tl.sqrt(var + eps))[:, None]  # (2)
        else:
            mean = tl.sum(x, axis=1) / D
            centred = tl.where(inside, x - mean[:, None], 0.0)
            var = tl.sum(centred * centred, axis=1) / D
            y = centred * (1.0 / tl.sqrt(var + eps))[:, None]  # (1)
        w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        y = y * w[None, :]
        if HAS_BIAS:
            y = y + tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        y = y / tl.load(s_ptr)
        if OUT == 1:  # (3)
            tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], tl.minimum(tl.maximum(y, -448.0), 448.0).to(tl.float8e4nv), mask=inside)
        else:
            q = tl.minimum(tl.maximum(libdevice.rint(y), -127.0), 127.0)
            tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], q.to(tl.int8), mask=inside)

    return triton, norm_codes_kernel


def reference(x, weight, bias, scale, eps: float, rms: bool, out: int) -> torch.Tensor:
    """(1) or (2), then (3), in float64 with torch ops: the tests' reference, and what the operator computes on a CPU
    tensor (the variants never run there)."""
    xd = x.double()
    if rms:
        y = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
    else:
        centred = xd - xd.mean(-1, keepdim=True)
        y = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    y = y * weight.double() + (bias.double() if bias is not None else 0.0)
    return codes(y / scale.double(), out)


@torch.library.custom_op("ptqflow::norm_codes", mutates_args=())
def norm_codes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, eps: float,
               rms: bool, out: int) -> torch.Tensor:
    """(1) or (2), then (3): x [..., D] -> codes [..., D] (float8 e4m3 for out=1, int8 for out=2)."""
    if not x.is_cuda:
        return reference(x, weight, bias, scale, eps, rms, out)
    triton, kernel = _kernel()
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, d), device=x.device, dtype=OUT_DTYPES[out])
    block_d = triton.next_power_of_2(d)
    rows = max(1, min(16, 4096 // block_d))
    kernel[(triton.cdiv(m, rows),)](x2, weight, bias if bias is not None else weight, scale, y, m, d, x2.stride(0), y.stride(0),
                                    eps, RMS=rms, HAS_BIAS=bias is not None, OUT=out, BLOCK_D=block_d, ROWS=rows,
                                    num_warps=4 if block_d <= 1024 else 8)
    return y.reshape(x.shape)


@norm_codes.register_fake
def _(x, weight, bias, scale, eps, rms, out):
    return x.new_empty(x.shape, dtype=OUT_DTYPES[out])
