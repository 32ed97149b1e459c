"""W8A8 `int8_dynamic`: formulas, error bounds, both kernels, memory, and the scheme on a trained tiny model."""

from __future__ import annotations

import pytest
import torch

from ptqflow.sizes import memory_footprint
from ptqflow.errors import PtqflowError
from ptqflow.quantize import load_variant, quantize_variant
from ptqflow.quantize.int8_dynamic import Int8DynamicLinear, int_mm_fits, pick_kernel, quantize_per_token, quantize_weight


def _layer(w: torch.Tensor, b: torch.Tensor, kernel: str) -> Int8DynamicLinear:
    layer = Int8DynamicLinear(w.shape[1], w.shape[0], torch.float32)
    q, s = quantize_weight(w)
    layer.weight_int8.copy_(q)
    layer.weight_scale.copy_(s)
    layer.bias.copy_(b)
    layer.set_kernel(kernel)
    return layer


def test_weight_codes_and_error_bound_per_output_channel():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=gen) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different ranges
    w[5] = 0.0  # an all-zero channel is exact
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and s.shape == (24,)
    assert torch.equal(q.abs().amax(dim=1)[torch.arange(24) != 5], torch.full((23,), 127, dtype=torch.int8))
    err = (w - q.float() * s[:, None]).abs()
    assert bool((err <= s[:, None] / 2 * (1 + 1e-6)).all())
    assert torch.equal(q[5], torch.zeros(40, dtype=torch.int8))


def test_activation_codes_and_error_bound_per_token():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 32, generator=gen) * torch.arange(1, 11)[:, None]
    xq, xs = quantize_per_token(x)
    assert xs.shape == (10, 1) and int(xq.abs().max()) <= 127
    assert bool(((x - xq.float() * xs).abs() <= xs / 2 * (1 + 1e-6)).all())


def test_int_mm_kernel_computes_formula_3_exactly():
    gen = torch.Generator().manual_seed(2)
    w, b, x = torch.randn(48, 64, generator=gen), torch.randn(48, generator=gen), torch.randn(5, 3, 64, generator=gen)
    layer = _layer(w, b, "int_mm")
    y = layer(x)
    assert y.shape == (5, 3, 48)
    xq, xs = quantize_per_token(x.reshape(-1, 64))
    exact = (xq.double() @ layer.weight_int8.double().t()) * xs.double() * layer.weight_scale.double() + b.double()
    torch.testing.assert_close(y.reshape(-1, 48).double(), exact, rtol=1e-6, atol=1e-5)
    # and close to the float layer: relative error of a few percent of the output scale at most
    ref = x @ w.t() + b
    assert float((y - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_fbgemm_kernel_agrees_with_int_mm_and_holds_no_unpacked_codes():
    gen = torch.Generator().manual_seed(3)
    w, b, x = torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen), torch.randn(40, 64, generator=gen)
    ref = x @ w.t() + b
    fb, mm = _layer(w, b, "fbgemm"), _layer(w, b, "int_mm")
    assert fb.weight_int8.numel() == 0 and fb.extra_memory_bytes() == 32 * 64 + 12 * 32
    for y in (fb(x), mm(x)):
        assert float((y - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_kernel_choice_per_device_and_shape_rule():
    assert pick_kernel("auto", torch.device("cpu")) == "fbgemm"
    assert pick_kernel("auto", torch.device("cuda")) == "int_mm"
    with pytest.raises(PtqflowError, match="CPU kernel"):
        pick_kernel("fbgemm", torch.device("cuda"))
    assert int_mm_fits(768, 2304) and not int_mm_fits(100, 64) and not int_mm_fits(64, 12)


@pytest.mark.parametrize("kernel", ["fbgemm", "int_mm"])
def test_scheme_keeps_int8_in_memory_and_agrees_with_fp32(tmp_path, tiny_trained, tiny_prepared, kernel, fp32_artifact):
    from ptqflow.data import load_prepared
    from ptqflow.evaluate import predict

    raw = {"scheme": "int8_dynamic", "kernel": kernel, "embeddings": "int8"}
    meta = quantize_variant("q", raw, tiny_trained, tmp_path / "q")
    assert meta["quantized_modules"] == 8 and meta["quantized_embeddings"] == 2  # 4 projections x 2 layers
    model, _ = load_variant("q", raw, tmp_path / "q", torch.device("cpu"))
    assert model.ptqflow_runtime["kernel"] == kernel and model.ptqflow_runtime["int8_layers"] == 8
    assert model.ptqflow_runtime["fallback_layers"] == 0
    fp32, _ = load_variant("fp32", {"scheme": "fp32"}, fp32_artifact, torch.device("cpu"))
    assert memory_footprint(model) < 0.3 * memory_footprint(fp32)
    data, _ = load_prepared(tiny_prepared)
    ids = data["test"]["input_ids"]
    agree = (predict(model, ids, 64, 50256) == predict(fp32, ids, 64, 50256)).mean()
    assert agree >= 0.95

