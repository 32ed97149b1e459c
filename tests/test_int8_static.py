"""int8 W8A8 with calibrated static activation scales (`int8_static`): the layer against a float64 reference
within the int8 rounding bound (the fbgemm and `int_mm` paths on the CPU, the fused Triton kernel on a GPU), the artifact's
codes and scales, every projection counted; skipped with the reason without a GPU."""

from __future__ import annotations

import pytest
import torch

from ptqflow.quantize import unavailable

from .w8a8_checks import assert_all_projections_8bit_close_to_fp32

CUDA = torch.device("cuda")


def test_triton_kernel_skipped_with_the_reason_on_cpu_and_auto_runs_there():
    cpu = torch.device("cpu")
    assert "CUDA GPU" in unavailable("i", {"scheme": "int8_static", "kernel": "triton"}, cpu)
    assert unavailable("i", {"scheme": "int8_static"}, cpu) is None  # kernel auto: fbgemm on a CPU, fast on every x86 kind
    from ptqflow.machine import assume_cpu

    for flags in (["avx2", "fma", "f16c"], ["avx2", "avx512f", "avx512_vnni"], ["avx512f", "amx_tile", "amx_int8"]):
        with assume_cpu(flags):
            assert unavailable("i", {"scheme": "int8_static"}, cpu) is None
            why = unavailable("i", {"scheme": "int8_static", "kernel": "int_mm"}, cpu)
            assert (why is None) == any(f in flags for f in ("avx512_vnni", "amx_int8")), (flags, why)
            assert why is None or ("torch._int_mm has no fast path" in why and "fbgemm" in why)
    assert "CUDA graphs" in unavailable("i", {"scheme": "int8_static", "compile": "reduce-overhead"}, cpu)


def test_cpu_variant_runs_every_projection_in_int8_and_records_the_ranges(tmp_path, tiny_trained, tiny_prepared,
                                                                          fp32_artifact):
    """The default `int8_static_cpu` shape on the CPU: calibrated per-tensor scales, every body projection an int8
    GEMM (fbgemm), float32 elsewhere, the calibrated input ranges recorded largest first."""
    from ptqflow.calibration import for_model
    from ptqflow.data import load_prepared
    from ptqflow.evaluate import predict
    from ptqflow.quantize import load_variant, quantize_variant

    raw = {"scheme": "int8_static", "dtype": "float32", "calibration_rows": 64}
    meta = quantize_variant("s", raw, tiny_trained, tmp_path / "s", torch.device("cpu"),
                            calibration=lambda: for_model(tiny_prepared, tiny_trained))
    assert meta["quantized_modules"] == 8 and "float32 elsewhere" in meta["runtime_dtype"]
    ranges = list(meta["input_absmax"].values())
    assert len(ranges) == 8 and ranges == sorted(ranges, reverse=True) and ranges[-1] > 0
    model, _ = load_variant("s", raw, tmp_path / "s", torch.device("cpu"))
    assert model.ptqflow_runtime["w8a8_layers"] == 8 and "fbgemm" in model.ptqflow_runtime["kernel"]
    assert next(model.parameters()).dtype == torch.float32
    fp32, _ = load_variant("fp32", {"scheme": "fp32"}, fp32_artifact, torch.device("cpu"))
    ids = load_prepared(tiny_prepared)[0]["test"]["input_ids"]
    assert (predict(model, ids, 64, 50256) == predict(fp32, ids, 64, 50256)).mean() >= 0.9


def _bound_check(kernel: str, device: torch.device, exact_sums: bool = True) -> None:
    from ptqflow.quantize.int8_static import Int8StaticLinear, Int8StaticOptions, encode

    gen = torch.Generator(device=device.type).manual_seed(0)
    k, n, rows = 768, 2304, 200
    x = torch.randn(rows, k, device=device, generator=gen).to(torch.bfloat16)
    w = torch.randn(n, k, device=device, generator=gen) * 0.05
    b = torch.randn(n, device=device, generator=gen) * 0.1
    options = Int8StaticOptions(kernel=kernel)
    layer = Int8StaticLinear(k, n, options).to(device)
    for name, t in encode(w, options).items():
        getattr(layer, name).copy_(t)
    a = float(x.float().abs().max())
    layer.input_scale.fill_(a / 127)
    layer.bias.copy_(b.to(torch.bfloat16))
    with torch.no_grad():
        y = layer(x).double()
    xd, wd = x.double(), w.double()
    ref = xd @ wd.t() + b.to(torch.bfloat16).double()
    s_x, s_w = layer.input_scale.double(), layer.weight_scale.double().reshape(1, -1)
    # |x - s_x xq| <= s_x / 2, |w - s_w wq| <= s_w / 2 (no saturation: the scale covers max |x|), exact int32 sums
    err = xd.abs().sum(1, keepdim=True) * s_w / 2 + s_x / 2 * wd.abs().sum(1).reshape(1, -1) + k * s_x * s_w / 4
    bound = err + 2.0**-8 * (ref.abs() + err) + 1e-6  # + the bfloat16 output rounding, fp32 rescale
    if exact_sums:
        assert bool(((y - ref).abs() <= bound).all()), float(((y - ref).abs() - bound).max())
    assert float((y - ref).abs().mean()) < 0.05 * float(ref.abs().mean())


def test_int_mm_path_within_the_int8_bound_of_a_float64_reference():
    _bound_check("int_mm", torch.device("cpu"))  # one GEMM: slow without VNNI, still seconds


def test_fbgemm_path_within_the_int8_bound_where_its_sums_are_exact():
    """fbgemm's u8 x s8 GEMM accumulates exactly in int32 with VNNI / AMX: the same elementwise bound. Without
    them (AVX2) a pair sum can saturate in int16 (machine.exact_int8_products): only the mean error is bounded."""
    from ptqflow.machine import exact_int8_products

    _bound_check("fbgemm", torch.device("cpu"), exact_sums=exact_int8_products())


def test_fbgemm_and_int_mm_compute_the_same_codes():
    """The fbgemm path quantizes exactly as formula (2) (the op is handed s_x xq): with exact sums the two CPU
    kernels agree to float rounding, at 8 and at 4 activation bits."""
    from ptqflow.machine import exact_int8_products
    from ptqflow.quantize.int8_static import Int8StaticOptions, build_layer

    if not exact_int8_products():
        pytest.skip("needs VNNI / AMX int8 (exact int32 sums in fbgemm); this CPU's u8 x s8 pair sums can saturate")
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(384, 1536), torch.randn(4, 50, 384) * 3
    stats = {"smooth": None, "range": float(x.abs().max())}
    for bits in (8, 4):
        fb, mm = (build_layer(lin, stats, Int8StaticOptions(kernel=k, dtype="float32", activation_bits=bits), torch.device("cpu"))
                  for k in ("fbgemm", "int_mm"))
        with torch.no_grad():
            assert float((fb(x) - mm(x)).abs().max()) < 1e-4, bits


@pytest.mark.gpu
def test_fused_triton_kernel_within_the_int8_bound_of_a_float64_reference():
    if unavailable("i", {"scheme": "int8_static"}, CUDA):
        pytest.skip(unavailable("i", {"scheme": "int8_static"}, CUDA))
    _bound_check("triton", CUDA)


def test_codes_and_calibrated_scales_are_stored_for_every_projection(tiny_trained, tiny_prepared, tmp_path):
    from safetensors import safe_open

    from ptqflow.calibration import for_model
    from ptqflow.quantize import int8_static
    from ptqflow.quantize.registry import resolve

    _, options = resolve("i", {"scheme": "int8_static", "calibration_rows": 32, "keep_bf16": ["attn.c_proj"]})
    (tmp_path / "i").mkdir()
    meta = int8_static.quantize(tiny_trained, tmp_path / "i", options, for_model(tiny_prepared, tiny_trained))
    assert meta["quantized_modules"] == 6 and len(meta["kept_bf16"]) == 2 and meta["kept_full_precision"] == ["score"]
    assert meta["calibration"]["rows"] == 32 and "validation" in meta["calibration"]["source"]
    with safe_open(str(tmp_path / "i" / int8_static.WEIGHTS_FILE), framework="pt") as f:
        codes = [k for k in f.keys() if k.endswith(".weight_int8")]
        assert len(codes) == 6 and all(f.get_tensor(k).dtype == torch.int8 for k in codes)
        assert all(int(f.get_tensor(k).abs().max()) == 127 for k in codes)
        assert all(float(f.get_tensor(k)) > 0 for k in f.keys() if k.endswith(".input_scale"))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["triton", "int_mm"])
def test_every_projection_runs_in_int8_close_to_fp32(tmp_path, kernel):
    assert_all_projections_8bit_close_to_fp32({"scheme": "int8_static", "kernel": kernel, "calibration_rows": 64}, tmp_path)
