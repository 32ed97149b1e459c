"""One GPU kernel: an int8 x int8 matrix product with its float rescale, bias and bfloat16 cast fused into the
epilogue (Triton), for the `int8_static` scheme.

    y[m, n] = bf16( s_x * s_w[n] * sum_k xq[m, k] wq[n, k] + b[n] )                                    (1)

xq: [M, K] int8 activation codes (one per-tensor scale s_x, a 0-d float32 tensor so that a CUDA graph reads
it from memory); wq: [N, K] int8 weight codes with per-output-channel scales s_w [N] (float32); b [N]
(bfloat16). The sum is accumulated exactly in int32 on the tensor cores; the scaling happens in registers,
so the int32 result is never written to memory (what `torch._int_mm` followed by a rescale does: an [M, N]
int32 write and read per projection). Tile sizes are autotuned on first use per (N, K) and M rounded up to
a power of two (an evaluation whose batches differ in length tunes a few times, not once per batch).

Registered as the custom operator `ptqflow::int8_gemm_rescale` so `torch.compile` treats it as one opaque
call and CUDA graphs capture it. Needs Triton and a CUDA GPU; `missing()` says why not.
"""

from __future__ import annotations

import functools
import importlib.util

import torch


def missing() -> str | None:
    """Why the kernel cannot run here, or None."""
    if importlib.util.find_spec("triton") is None:
        return f"the int8 GEMM kernel is written in Triton, which torch {torch.__version__} here does not ship"
    if not torch.cuda.is_available():
        return "the int8 GEMM kernel (Triton) needs a CUDA GPU"
    return None


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    tiles = [(128, 128, 64, 4, 4), (128, 128, 128, 3, 8), (128, 256, 64, 3, 8), (256, 128, 64, 3, 8),
             (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 64, 128, 4, 4), (64, 256, 128, 3, 8)]
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
               for m, n, k, s, w in tiles]

    @triton.autotune(configs=configs, key=["M_BUCKET", "N", "K"])
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
    @triton.jit
    def int8_gemm_rescale_kernel(x_ptr, w_ptr, y_ptr, sx_ptr, sw_ptr, b_ptr, M, N, K, M_BUCKET, stride_xm, stride_wn, stride_ym,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                 GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
        pid = tl.program_id(0)
        blocks_m, blocks_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group = GROUP_M * blocks_n  # tiles visited in groups of GROUP_M rows of blocks: the weights stay in L2
        first_m = (pid // group) * GROUP_M
        rows = min(blocks_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % rows
        pid_n = (pid % group) // rows
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None]  # a [BLOCK_K, BLOCK_N] tile of W^T
        in_m, in_n = offs_m[:, None] < M, offs_n[None, :] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                x = tl.load(x_ptrs, mask=in_m, other=0)
                w = tl.load(w_ptrs, mask=in_n, other=0)
            else:
                left = K - k * BLOCK_K
                x = tl.load(x_ptrs, mask=in_m & (offs_k[None, :] < left), other=0)
                w = tl.load(w_ptrs, mask=in_n & (offs_k[:, None] < left), other=0)
            acc = tl.dot(x, w, acc, out_dtype=tl.int32)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        inside_n = offs_n < N
        scale = tl.load(sx_ptr) * tl.load(sw_ptr + offs_n, mask=inside_n, other=0.0)
        bias = tl.load(b_ptr + offs_n, mask=inside_n, other=0.0).to(tl.float32)
        y = acc.to(tl.float32) * scale[None, :] + bias[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y.to(tl.bfloat16), mask=in_m & in_n)

    return triton, int8_gemm_rescale_kernel


@torch.library.custom_op("ptqflow::int8_gemm_rescale", mutates_args=())
def int8_gemm_rescale(xq: torch.Tensor, wq: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Formula (1): xq [M, K] int8, wq [N, K] int8, s_x 0-d float32, s_w [N] float32, bias [N] -> [M, N] bfloat16."""
    triton, kernel = _kernel()
    xq, wq = xq.contiguous(), wq.contiguous()
    (m, k), n = xq.shape, wq.shape[0]
    y = torch.empty((m, n), device=xq.device, dtype=torch.bfloat16)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    kernel[grid](xq, wq, y, s_x, s_w, bias, m, n, k, triton.next_power_of_2(m), xq.stride(0), wq.stride(0), y.stride(0))
    return y


@int8_gemm_rescale.register_fake
def _(xq, wq, s_x, s_w, bias):
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=torch.bfloat16)
