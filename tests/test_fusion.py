"""Fused activation quantization (quantize/fusion.py, runtimes/norm_codes.py, runtimes/gemm8.py): on a CPU the
operators compute their float64 references, so which producers get fused (found by tensor identity, a post-norm's
residual use caught by the logits check) is tested here on every family; on a GPU the Triton kernels are checked
against those references and the fused fp8 model against the unfused one."""

from __future__ import annotations

import pytest
import torch

from .conftest import GPT2
from .families import FAMILIES, make_base, random_calibration

CUDA = torch.device("cuda")


def _family_dir(family: str, tmp_path):
    from ptqflow.benchmark import build_from_config

    build_from_config(str(make_base(family, GPT2, tmp_path / "base")), {}, tmp_path / "model")
    return tmp_path / "model"


def _load_pair(scheme: dict, model_dir, tmp_path, device: torch.device, fuse: list[str]):
    """(unfused, fused) models of one artifact, on `device` (the registry's `available` is bypassed on purpose: on a
    CPU the operators compute their references)."""
    from ptqflow.quantize.registry import resolve

    entry, options = resolve("v", scheme)
    (tmp_path / "q").mkdir(exist_ok=True)
    entry.quantize(model_dir, tmp_path / "q", options, random_calibration())
    _, fused_options = resolve("v", {**scheme, "fuse": fuse})
    return (entry.load(tmp_path / "q", options, device).eval(), entry.load(tmp_path / "q", fused_options, device).eval())


def _logits(model, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (3, 20), generator=gen).to(device)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


# family -> (norms fused, activations fused) per layer: pre-norm GPT-2 both norms; post-norm BERT none (its norms feed
# the residual add too: another op reads them); Llama's SwiGLU is not a GELU between two projections
EXPECTED = {"gpt2": (2, 1), "bert": (0, 1), "llama": (2, 0)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_producers_found_by_tensor_identity_and_the_logits_unchanged(family, tmp_path):
    layers = 2
    unfused, fused = _load_pair({"scheme": "int8_static", "kernel": "triton", "dtype": "float32", "calibration_rows": 24},
                                _family_dir(family, tmp_path), tmp_path, torch.device("cpu"), ["norm", "activation"])
    record = fused.ptqflow_runtime["fused"]
    norms, acts = EXPECTED[family]
    assert (record["norms"], record["activations"]) == (norms * layers, acts * layers), record
    assert not record["not_fused"]
    from ptqflow.quantize.fusion import FusedNorm, FusedUp

    assert sum(isinstance(m, FusedNorm) for m in fused.modules()) == norms * layers
    assert sum(isinstance(m, FusedUp) for m in fused.modules()) == acts * layers
    a, b = _logits(unfused, "cpu"), _logits(fused, "cpu")
    assert float((a - b).norm() / a.norm()) < 0.05  # the same codes up to rounding order (fp32 norm vs rounded input)


def test_fuse_is_checked_and_dynamic_fp8_cannot_fuse():
    from ptqflow.errors import PtqflowError
    from ptqflow.quantize.registry import resolve

    with pytest.raises(PtqflowError, match="fuse"):
        resolve("v", {"scheme": "fp8", "fuse": ["layernorm"]})
    with pytest.raises(PtqflowError, match="fuse"):
        resolve("v", {"scheme": "fp8", "activations": "dynamic", "fuse": ["norm"]})


def test_int8_fusion_needs_the_triton_kernel():
    from ptqflow.quantize import unavailable

    why = unavailable("v", {"scheme": "int8_static", "kernel": "fbgemm", "fuse": ["norm"]}, torch.device("cpu"))
    assert why and "fuse needs kernel: triton" in why


@pytest.mark.gpu
@pytest.mark.parametrize("code", ["fp8", "int8"])
@pytest.mark.parametrize("rms", [False, True])
def test_norm_codes_kernel_matches_the_float64_reference(code, rms):
    from ptqflow.runtimes.norm_codes import OUTPUTS, norm_codes, reference

    torch.manual_seed(0)
    x = (torch.randn(333, 768, device=CUDA) * 3 + 1).to(torch.bfloat16)
    w, b = torch.rand(768, device=CUDA) + 0.5, None if rms else torch.randn(768, device=CUDA) * 0.1
    s = torch.tensor(0.02, device=CUDA)
    got, want = (f(x, w, b, s, 1e-5, rms, OUTPUTS[code]) for f in (norm_codes, reference))
    if code == "int8":  # float32 vs float64 statistics: a code may sit on the other side of a rounding boundary
        assert int((got.int() - want.int()).abs().max()) <= 1 and float((got != want).float().mean()) < 0.01
    else:  # e4m3: one step is 2^-3 of the value
        g, r = got.float(), want.float()
        assert float(((g - r).abs() / r.abs().clamp_min(2.0**-6)).max()) <= 2.0**-3 + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("code", ["fp8", "int8"])
@pytest.mark.parametrize("act,out,tma", [(0, 0, True), (1, 0, True), (2, 0, True), (1, 1, True), (1, 2, True),
                                         (0, 0, False), (1, 1, False), (1, 2, False)])
def test_fused_gemm_matches_the_float64_reference(code, act, out, tma):
    """tma True: the TMA kernel (Hopper on); False: the pointer kernel (same epilogue)."""
    from ptqflow.runtimes.gemm8 import _launch, _tma_ready, reference

    torch.manual_seed(0)
    m, k, n = 300, 784, 1024  # M and K not multiples of the tiles (K rows of 16 bytes: TMA-ready): edges read as zero
    if code == "int8":
        xq = torch.randint(-127, 128, (m, k), device=CUDA, dtype=torch.int8)
        wq = torch.randint(-127, 128, (n, k), device=CUDA, dtype=torch.int8)
        s_x, s_w = torch.tensor(2e-3, device=CUDA), torch.rand(n, device=CUDA) * 1e-3
    else:
        xq = (torch.randn(m, k, device=CUDA) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
        wq = (torch.randn(n, k, device=CUDA) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
        s_x, s_w = torch.tensor(1e-3, device=CUDA), torch.full((n,), 1e-3, device=CUDA)
    bias = (torch.randn(n, device=CUDA) * 0.1).to(torch.bfloat16)
    s_out = torch.tensor(0.01 if out == 2 else 0.005, device=CUDA)
    if tma and not _tma_ready(xq, wq):
        pytest.skip(f"the TMA kernel needs Hopper or later; this card is sm_{''.join(map(str, torch.cuda.get_device_capability()))}")
    got = _launch(xq, wq, s_x, s_w, bias, s_out, act, out, tma=tma)
    want = reference(xq, wq, s_x, s_w, bias, s_out, act, out)
    assert got.dtype == want.dtype and got.shape == want.shape
    g, r = got.float(), want.float()
    if out == 2:
        assert int((g - r).abs().max()) <= 1 and float((g != r).float().mean()) < 0.01, (float((g - r).abs().max()), float((g != r).float().mean()))
        return
    # the tensor cores' float32 accumulation of e4m3 products is not exact (Hopper keeps fewer accumulator bits):
    # allowed 2^-9 of sum_k |x_k w_jk| (times GELU's slope, <= 1.13), on top of the output format's rounding
    # (bf16: one step, <= 2^-7 relative; e4m3 codes: 2^-3 relative, 2^-9 absolute below 2^-6)
    sums = (xq.float().abs() @ wq.float().abs().t()) * (s_x * s_w)[None, :] if code == "fp8" else torch.zeros_like(r)
    slack = 1.13 * 2.0**-9 * sums / (s_out if out == 1 else 1.0)
    fmt_rel, fmt_abs = (2.0**-7, 1e-6) if out == 0 else (2.0**-3, 2.0**-9)
    excess = (g - r).abs() - (fmt_rel * r.abs() + fmt_abs + slack)
    assert float(excess.max()) <= 0, (float(excess.max()), float((g - r).abs().max()))


@pytest.mark.gpu
def test_fused_fp8_gpt2_logits_match_the_unfused_model(tmp_path):
    from ptqflow.quantize import unavailable

    if unavailable("v", {"scheme": "fp8"}, CUDA):
        pytest.skip(unavailable("v", {"scheme": "fp8"}, CUDA))
    unfused, fused = _load_pair({"scheme": "fp8", "activations": "static", "calibration_rows": 24},
                                _family_dir("gpt2", tmp_path), tmp_path, CUDA, ["norm", "activation"])
    record = fused.ptqflow_runtime["fused"]
    assert (record["norms"], record["activations"]) == (4, 2), record
    a, b = _logits(unfused, CUDA), _logits(fused, CUDA)
    assert float((a - b).norm() / a.norm()) < 0.05
