"""One GPU kernel family: an 8-bit x 8-bit matrix product (int8 or float8 e4m3) with everything after it fused
into the epilogue (Triton): the float rescale, the bias, optionally the activation (GELU) and optionally the
quantization of the result to the next projection's 8-bit codes, for `int8_static` and the fused `fp8` / `int8`
layers (quantize/fusion.py).

    z[m, n] = s_x * s_w[n] * sum_k xq[m, k] wq[n, k] + b[n]                                              (1)
    y[m, n] = bf16(f(z[m, n]))                                     out: "bf16"                          (2)
    y[m, n] = e4m3(clamp(f(z) / s_out, -448, 448))                 out: "fp8"  (the next layer's codes)
    y[m, n] = int8(clamp(rint(f(z) / s_out), -127, 127))           out: "int8"
    f = identity, or GELU: gelu_tanh(z) = z * sigmoid(2 u), u = sqrt(2 / pi) (z + 0.044715 z^3)
                          (= 0.5 z (1 + tanh u), the tanh form GPT-2 uses); gelu_erf(z) = 0.5 z (1 + erf(z / sqrt 2))

xq: [M, K] codes of the activation with one per-tensor scale s_x (a 0-d float32 tensor, so that a CUDA graph reads
it from memory); wq: [N, K] codes with per-output-channel scales s_w [N] (float32; a per-tensor scale repeated);
b [N] (bfloat16). int8 products are accumulated exactly in int32, e4m3 products in float32 on the tensor cores;
scaling, activation and quantization happen in registers, so neither the accumulator nor the float activation
is ever written to memory (what `torch._int_mm` / `torch._scaled_mm` followed by separate kernels do: an [M, N]
write and read per step). The kernels divide by s_out as a multiplication by 1 / s_out. Two kernels (`_kernels`): on Hopper and later a persistent one fed by TMA descriptors, else
one with pointer loads; tile sizes are autotuned on first use per (N, K) and M rounded up to a power of two.

Registered as custom operators (`ptqflow::int8_gemm_rescale`, `ptqflow::gemm8_fused`) so `torch.compile`
treats each as one opaque call and CUDA graphs capture it. Needs Triton and a CUDA GPU; `missing()` says why not.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

ACTIVATIONS = {"none": 0, "gelu_tanh": 1, "gelu_erf": 2}
OUTPUTS = {"bf16": 0, "fp8": 1, "int8": 2}
OUT_DTYPES = (torch.bfloat16, torch.float8_e4m3fn, torch.int8)  # by OUTPUTS' number
E4M3_MAX = 448.0


def missing() -> str | None:
    """Why the kernel cannot run here, or None."""
    if importlib.util.find_spec("triton") is None:
        return f"the 8-bit GEMM kernels are written in Triton, which torch {torch.__version__} here does not ship"
    if not torch.cuda.is_available():
        return "the 8-bit GEMM kernels (Triton) need a CUDA GPU"
    return None


@functools.cache
def _kernels():
    """The two Triton kernels (compiled on first use): `pointer`, for any shape, and `tma`, for Hopper and later
    when the operands meet the tensor-memory accelerator's alignment (`_tma_ready`): persistent (one program per
    SM looping over output tiles; on Hopper Triton does not warp-specialise it, so the epilogue is not hidden
    behind the next tile's products), operands and result moved by TMA descriptors (no address arithmetic or masks: out-of-range rows and K columns read as zero, stores
    are clipped)."""
    import triton
    import triton.language as tl
    import triton.testing  # noqa: F401  (_launch times the two kernels with it)
    from triton.language.extra import libdevice

    @triton.jit
    def tile_of(tile, blocks_m, blocks_n, GROUP_M):
        """Output tiles in groups of GROUP_M rows of blocks, so that a group's weight columns stay in L2."""
        group = GROUP_M * blocks_n
        first_m = (tile // group) * GROUP_M
        rows = min(blocks_m - first_m, GROUP_M)
        return first_m + (tile % group) % rows, (tile % group) // rows

    @triton.jit
    def epilogue(acc, offs_n, N, sx_ptr, sw_ptr, b_ptr, so_ptr, ACT: tl.constexpr, OUT: tl.constexpr):
        """Formulas (1)-(2) on an accumulator tile, in registers; the result in the output dtype. GELU tanh as
        z / (1 + 2^(-2 u log2 e)) (= z sigmoid(2u)): one hardware exp2 and one approximate division (2 ulp of
        float32, far below bf16's or e4m3's rounding), no cancellation for negative z."""
        inside_n = offs_n < N
        scale = tl.load(sx_ptr) * tl.load(sw_ptr + offs_n, mask=inside_n, other=0.0)
        bias = tl.load(b_ptr + offs_n, mask=inside_n, other=0.0).to(tl.float32)
        z = acc.to(tl.float32) * scale[None, :] + bias[None, :]  # (1)
        if ACT == 1:
            u = z + 0.044715 * z * z * z
            z = tl.fdiv(z, 1.0 + tl.exp2(-2.302208198 * u), ieee_rounding=False)  # 2 sqrt(2/pi) log2(e) = 2.302208
        elif ACT == 2:
            z = 0.5 * z * (1.0 + libdevice.erf(z * 0.7071067811865476))
        if OUT == 0:  # (constexpr branches: one return type per compiled kernel)
            y = z.to(tl.bfloat16)
        elif OUT == 1:
            y = tl.minimum(tl.maximum(z * (1.0 / tl.load(so_ptr)), -448.0), 448.0).to(tl.float8e4nv)
        else:
            y = tl.minimum(tl.maximum(libdevice.rint(z * (1.0 / tl.load(so_ptr))), -127.0), 127.0).to(tl.int8)
        return y

    tiles = [(128, 128, 64, 4, 4), (128, 128, 128, 3, 8), (128, 256, 64, 3, 8), (256, 128, 64, 3, 8),
             (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 64, 128, 4, 4), (64, 256, 128, 3, 8),
             (128, 256, 128, 3, 8), (128, 128, 128, 4, 8)]
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
               for m, n, k, s, w in tiles]

    @triton.autotune(configs=configs, key=["M_BUCKET", "N", "K", "INT8", "ACT", "OUT"])
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
    @triton.jit
    def gemm8_kernel(x_ptr, w_ptr, y_ptr, sx_ptr, sw_ptr, b_ptr, so_ptr, M, N, K, M_BUCKET, stride_xm, stride_wn, stride_ym,
                     INT8: tl.constexpr, ACT: tl.constexpr, OUT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
        pid_m, pid_n = tile_of(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]  # a [BLOCK_N, BLOCK_K] tile of W, K contiguous
        in_m, in_n = offs_m[:, None] < M, offs_n[None, :] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT8 else tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:  # rows past M / columns past N only reach outputs that are not stored
                x = tl.load(x_ptrs, mask=in_m)
                w = tl.load(w_ptrs, mask=offs_n[:, None] < N)
            else:
                left = K - k * BLOCK_K
                if INT8:
                    x = tl.load(x_ptrs, mask=in_m & (offs_k[None, :] < left), other=0)
                    w = tl.load(w_ptrs, mask=(offs_n[:, None] < N) & (offs_k[None, :] < left), other=0)
                else:
                    x = tl.load(x_ptrs, mask=in_m & (offs_k[None, :] < left), other=0.0)
                    w = tl.load(w_ptrs, mask=(offs_n[:, None] < N) & (offs_k[None, :] < left), other=0.0)
            acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.int32 if INT8 else tl.float32)  # K-major operands (wgmma)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        y = epilogue(acc, offs_n, N, sx_ptr, sw_ptr, b_ptr, so_ptr, ACT, OUT)
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y, mask=in_m & in_n)

    def block_shapes(nargs):  # the descriptors' tile shapes follow the config being tried
        bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
        nargs["x_desc"].block_shape, nargs["w_desc"].block_shape, nargs["y_desc"].block_shape = [bm, bk], [bn, bk], [bm, bn]

    tma_tiles = [(128, 256, 128, 3, 8), (128, 256, 64, 4, 8), (128, 128, 128, 4, 8), (128, 128, 128, 3, 4),
                 (128, 128, 64, 5, 4), (64, 128, 128, 4, 4), (64, 256, 128, 3, 4), (128, 64, 128, 4, 4)]
    tma_configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w,
                                 pre_hook=block_shapes) for m, n, k, s, w in tma_tiles]

    @triton.autotune(configs=tma_configs, key=["M_BUCKET", "N", "K", "INT8", "ACT", "OUT"])
    @triton.jit
    def gemm8_tma_kernel(x_desc, w_desc, y_desc, sx_ptr, sw_ptr, b_ptr, so_ptr, M, N, K, M_BUCKET,
                         INT8: tl.constexpr, ACT: tl.constexpr, OUT: tl.constexpr, NUM_SMS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        blocks_m, blocks_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        k_steps = tl.cdiv(K, BLOCK_K)
        done = tl.program_id(0) - NUM_SMS  # the epilogue's own tile counter (the loads' runs ahead in the flattened loop)
        for tile in tl.range(tl.program_id(0), blocks_m * blocks_n, NUM_SMS, flatten=True):
            pid_m, pid_n = tile_of(tile, blocks_m, blocks_n, GROUP_M)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT8 else tl.float32)
            for k in range(k_steps):
                x = x_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
                w = w_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
                acc = tl.dot(x, w.T, acc, out_dtype=tl.int32 if INT8 else tl.float32)
            done += NUM_SMS
            pid_m, pid_n = tile_of(done, blocks_m, blocks_n, GROUP_M)
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], epilogue(acc, offs_n, N, sx_ptr, sw_ptr, b_ptr, so_ptr, ACT, OUT))

    return triton, gemm8_kernel, gemm8_tma_kernel


def reference(xq, wq, s_x, s_w, bias, s_out, act: int, out: int) -> torch.Tensor:
    """Formulas (1)-(2) in float64 with torch ops: the tests' reference, and what the operators compute on a CPU
    tensor (the variants never run there: their `available` asks for a CUDA GPU)."""
    z = (xq.double() @ wq.double().t()) * (s_x.double() * s_w.double())[None, :] + bias.double()[None, :]
    if act == 1:
        z = z * torch.sigmoid(2.0 * 0.7978845608028654 * (z + 0.044715 * z**3))
    elif act == 2:
        z = 0.5 * z * (1.0 + torch.erf(z * 0.7071067811865476))
    return z.to(torch.bfloat16) if out == 0 else codes(z / s_out.double(), out)


def codes(y: torch.Tensor, out: int) -> torch.Tensor:
    """The codes of y (already divided by its scale): e4m3(clamp(y, -448, 448)) for out 1, int8(clamp(round(y), -127,
    127)) for out 2 (the references' last step, here and in norm_codes.py)."""
    if out == 1:
        return y.clamp(-E4M3_MAX, E4M3_MAX).float().to(torch.float8_e4m3fn)
    return torch.round(y).clamp(-127, 127).to(torch.int8)


def _tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether the TMA kernel can take these operands: a Hopper-or-later GPU, Triton's host tensor descriptors, and
    row-major 2-d tensors whose rows start on 16-byte boundaries."""
    if torch.cuda.get_device_capability(tensors[0].device)[0] < 9 or importlib.util.find_spec("triton.tools.tensor_descriptor") is None:
        return False
    return all(t.dim() == 2 and t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0
               for t in tensors)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_PICKED: dict[tuple, bool] = {}  # autotune key -> whether the TMA kernel was the faster of the two there


def _launch(xq, wq, s_x, s_w, bias, s_out, act: int, out: int, tma: bool | None = None) -> torch.Tensor:
    """Run formulas (1)-(2) on the GPU (the float64 reference on CPU tensors). `tma`: True / False forces the TMA /
    pointer kernel (the tests and the microbenchmark); None: where `_tma_ready`, the faster of the two, timed once
    per autotune key after each has tuned its tiles (on Hopper the TMA kernel wins on large products, the pointer
    kernel on some small ones: 2048 x 768 x 3072 with GELU, benchmarks/fused-h200/)."""
    if not xq.is_cuda:
        return reference(xq, wq, s_x, s_w, bias, s_out, act, out)
    triton, kernel, tma_kernel = _kernels()
    xq, wq = xq.contiguous(), wq.contiguous()
    (m, k), n = xq.shape, wq.shape[0]
    y = torch.empty((m, n), device=xq.device, dtype=OUT_DTYPES[out])
    int8, bucket = xq.dtype == torch.int8, triton.next_power_of_2(m)

    def run_tma():
        from triton.tools.tensor_descriptor import TensorDescriptor

        sms = _sm_count(xq.device.index or 0)
        descs = [TensorDescriptor.from_tensor(t, [64, 64]) for t in (xq, wq, y)]  # tile shapes set per config (pre_hook)
        grid = lambda meta: (min(sms, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)  # noqa: E731
        tma_kernel[grid](*descs, s_x, s_w, bias, s_out, m, n, k, bucket, INT8=int8, ACT=act, OUT=out, NUM_SMS=sms)

    def run_pointer():
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        kernel[grid](xq, wq, y, s_x, s_w, bias, s_out, m, n, k, bucket, xq.stride(0), wq.stride(0), y.stride(0),
                     INT8=int8, ACT=act, OUT=out)

    if tma is None:
        if not _tma_ready(xq, wq, y):
            tma = False
        else:
            key = (xq.device.index, bucket, n, k, int8, act, out)
            if key not in _PICKED:
                run_tma()  # each kernel autotunes its tiles on its first call, before it is timed
                run_pointer()
                _PICKED[key] = triton.testing.do_bench(run_tma) <= triton.testing.do_bench(run_pointer)
            tma = _PICKED[key]
    if tma:
        run_tma()
    else:
        run_pointer()
    return y


@torch.library.custom_op("ptqflow::int8_gemm_rescale", mutates_args=())
def int8_gemm_rescale(xq: torch.Tensor, wq: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(1)-(2) without activation: xq [M, K] int8, wq [N, K] int8, s_x 0-d float32, s_w [N] float32, bias [N] ->
    [M, N] bfloat16."""
    return _launch(xq, wq, s_x, s_w, bias, s_x, 0, 0)


@int8_gemm_rescale.register_fake
def _(xq, wq, s_x, s_w, bias):
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=torch.bfloat16)


@torch.library.custom_op("ptqflow::gemm8_fused", mutates_args=())
def gemm8_fused(xq: torch.Tensor, wq: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor,
                s_out: torch.Tensor, act: int, out: int) -> torch.Tensor:
    """(1)-(2) with activation `act` (ACTIVATIONS) and output `out` (OUTPUTS; s_out the next layer's 0-d input scale):
    xq, wq both int8 or both float8 e4m3 -> [M, N] bfloat16, e4m3 or int8."""
    return _launch(xq, wq, s_x, s_w, bias, s_out, act, out)


@gemm8_fused.register_fake
def _(xq, wq, s_x, s_w, bias, s_out, act, out):
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=OUT_DTYPES[out])
