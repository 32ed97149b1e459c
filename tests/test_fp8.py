"""float8 W8A8 (`fp8` scheme): the kernel against a float64 reference within the e4m3 error bound, static
scales calibrated on validation rows, every projection counted; skipped with the reason without a fit GPU."""

from __future__ import annotations

import pytest
import torch

from ptqflow.quantize import unavailable

from .w8a8_checks import assert_all_projections_8bit_close_to_fp32

CUDA = torch.device("cuda")


def test_skipped_with_the_reason_on_cpu():
    assert "compute capability >= 8.9" in unavailable("f", {"scheme": "fp8"}, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("static", [True, False])
def test_kernel_within_the_e4m3_bound_of_a_float64_reference(static):
    from ptqflow.quantize.fp8 import Fp8Linear, Fp8Options, absmax_scale, to_e4m3

    if unavailable("f", {"scheme": "fp8"}, CUDA):
        pytest.skip(unavailable("f", {"scheme": "fp8"}, CUDA))
    gen = torch.Generator(device="cuda").manual_seed(0)
    k, n, rows = 768, 2304, 200  # rows not a multiple of 16: padded inside
    x = torch.randn(rows, k, device=CUDA, generator=gen).to(torch.bfloat16)
    w = torch.randn(n, k, device=CUDA, generator=gen) * 0.05
    b = torch.randn(n, device=CUDA, generator=gen) * 0.1
    layer = Fp8Linear(k, n, Fp8Options(activations="static" if static else "dynamic")).to(CUDA)
    s_w = absmax_scale(w) if static else absmax_scale(w, dim=1).reshape(1, -1)
    layer.weight_fp8.copy_(to_e4m3(w, s_w if static else s_w.reshape(-1, 1)))
    layer.weight_scale.copy_(s_w)
    layer.input_scale.fill_(float(x.float().abs().max()) / 448.0)
    layer.bias.copy_(b.to(torch.bfloat16))
    y = layer(x).double()
    xd, wd = x.double(), w.double()
    ref = xd @ wd.t() + b.to(torch.bfloat16).double()
    s_x = (xd.abs().amax() if static else xd.abs().amax(dim=1, keepdim=True)) / 448  # what the layer uses
    s_wd = s_w.double()
    rel, sub = 2.0**-4, 2.0**-10  # e4m3: relative half-ulp (3 mantissa bits); half the subnormal spacing, in scale units
    err = (xd.abs() @ wd.abs().t()) * ((1 + rel) ** 2 - 1) \
        + sub * (1 + rel) * (xd.abs().sum(1, keepdim=True) * s_wd.reshape(1, -1) + s_x * wd.abs().sum(1).reshape(1, -1)) \
        + k * sub * sub * s_x * s_wd.reshape(1, -1)
    bound = err + 2.0**-7 * (ref.abs() + err)  # + the bfloat16 output rounding
    assert bool(((y - ref).abs() <= bound).all()), float(((y - ref).abs() - bound).max())
    assert float((y - ref).abs().mean()) < 0.08 * float(ref.abs().mean())  # ~5% expected: 3 mantissa bits per operand


def test_static_scales_come_from_validation_rows_and_every_projection_is_stored(tiny_trained, tiny_prepared, tmp_path):
    """Quantizing runs anywhere (only running needs the GPU): calibration on the first validation rows, 8 fp8
    projections with a positive activation scale each, the head left in bfloat16."""
    from safetensors import safe_open

    from ptqflow.calibration import for_model
    from ptqflow.quantize import fp8
    from ptqflow.quantize.registry import resolve

    seen = []

    class Spy:
        def __init__(self, real):
            self.real, self.source = real, real.source

        def batches(self, n, bs):
            out = self.real.batches(n, bs)
            seen.extend(out)
            return out

    cal = for_model(tiny_prepared, tiny_trained)
    _, options = resolve("f", {"scheme": "fp8", "calibration_rows": 40, "calibration_batch_size": 16})
    (tmp_path / "f").mkdir()
    meta = fp8.quantize(tiny_trained, tmp_path / "f", options, Spy(cal))
    assert meta["quantized_modules"] == 8 and meta["kept_full_precision"] == ["score"]
    assert meta["calibration"] == {"rows": 40, "source": f"{tiny_prepared} validation split"}
    assert [r.tolist() for b in seen for r in b["input_ids"]] == [r.tolist() for b in cal.batches(40, 16) for r in b["input_ids"]]
    with safe_open(str(tmp_path / "f" / fp8.WEIGHTS_FILE), framework="pt") as f:
        fp8_weights = [k for k in f.keys() if k.endswith(".weight_fp8")]
        assert len(fp8_weights) == 8 and all(f.get_tensor(k).dtype == torch.float8_e4m3fn for k in fp8_weights)
        assert all(float(f.get_tensor(k)) > 0 for k in f.keys() if k.endswith(".input_scale"))


@pytest.mark.gpu
@pytest.mark.parametrize("activations", ["static", "dynamic"])
def test_every_projection_runs_in_fp8_close_to_fp32(tmp_path, activations):
    assert_all_projections_8bit_close_to_fp32({"scheme": "fp8", "activations": activations, "calibration_rows": 64}, tmp_path)
