"""ONNX Runtime variants: export parity and quantized-product counts for every family, calibration on
validation rows only, evaluation through the adapter, one-line rejection of bad options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptqflow.errors import PtqflowError
from ptqflow.machine import exact_int8_products
from ptqflow.quantize import load_variant, quantize_variant, resolve, unavailable

from .conftest import GPT2
from .families import PROJECTIONS, make_base, random_calibration

CPU = torch.device("cpu")
ORT = {
    "ort_fp32": {"scheme": "ort_fp32"},
    "ort_int8_dynamic": {"scheme": "ort_int8_dynamic"},
    "ort_int8_static": {"scheme": "ort_int8_static", "calibration_rows": 24, "calibration_batch_size": 8},
}


def test_every_family_exports_with_parity_and_every_product_quantized(fresh_family):
    """Each family's graph matches PyTorch at another batch and length than the export example (padded rows
    included), holds exactly projections + head weight products, and both int8 schemes quantize all of them."""
    from ptqflow.batches import pad_batch

    family, root = fresh_family
    expected = PROJECTIONS[family] + 1  # + the classification head
    ref = __import__("ptqflow.quantize.common", fromlist=["load_finetuned"]).load_finetuned(root / "model")
    rows = [list(range(5, 5 + n)) for n in (20, 7, 13)]
    batch = pad_batch(rows, ref.config.pad_token_id or 0, None, [[0] * len(r) for r in rows] if family == "bert" else None)
    with torch.no_grad():
        want = ref(**batch).logits
    for name, raw in ORT.items():
        meta = quantize_variant(name, raw, root / "model", root / name, CPU, calibration=random_calibration)
        assert meta["parity_max_abs_diff"] < 1e-4, (family, meta["parity_max_abs_diff"])
        assert sum(meta["onnx"]["weight_matmuls"].values()) == expected
        assert meta["quantized_tensors"] == (0 if name == "ort_fp32" else expected), (family, name)
        model, _ = load_variant(name, raw, root / name, CPU)
        with torch.no_grad():
            got = model(**batch).logits
        assert got.shape == want.shape
        # int8: 5% of the largest logit; where the CPU has no VNNI reduce_range (auto) keeps 7-bit weights (twice the
        # weight step, so twice the bound): machine.exact_int8_products, the decision the scheme takes
        tolerance = 1e-4 if name == "ort_fp32" else 0.05 * float(want.abs().max()) * (1 if exact_int8_products() else 2) + 1e-3
        assert float((got - want).abs().max()) <= tolerance, (family, name)
        assert {p.name for p in (root / name).iterdir()} == {"config.json", "model.onnx", "model.onnx.data", "ptqflow.json"}
        if name == "ort_int8_static":
            assert meta["calibration"]["rows"] == 24 and "random" in meta["calibration"]["source"]
            assert meta["onnx_operators_quantized"].get("DequantizeLinear", 0) >= expected  # QDQ format


def test_export_parity_failure_stops_with_the_number(tmp_path):
    """A graph that no longer matches the model is refused with the difference and the tolerance."""
    from ptqflow.benchmark import build_from_config
    from ptqflow.runtimes.onnx_export import ExportOptions, export_onnx, load_for_export, parity_check

    build_from_config(str(make_base("gpt2", GPT2, tmp_path / "base")), {}, tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "onnx", ExportOptions())
    model = load_for_export(tmp_path / "model", "sdpa")
    with torch.no_grad():
        model.score.weight.mul_(3.0)
    with pytest.raises(PtqflowError, match=r"logits differ from PyTorch by .* > parity_tolerance 0.001"):
        parity_check(model, tmp_path / "onnx" / "model.onnx", 1e-3)


def test_calibration_reads_validation_rows_only(tiny_prepared, tiny_trained, tmp_path, monkeypatch):
    """The static scheme sees the first calibration_rows rows of the validation split, padded as the benchmark
    pads, and no test row."""
    import onnxruntime.quantization as ortq

    from ptqflow.batches import pad_batch
    from ptqflow.calibration import for_model
    from ptqflow.data import load_prepared

    seen = []
    real = ortq.quantize_static

    def spy(model_input, model_output, reader, **kwargs):
        feeds = []
        while (feed := reader.get_next()) is not None:
            feeds.append(feed)
        seen.extend(feeds)
        replay = iter(feeds)
        reader.get_next = lambda: next(replay, None)
        return real(model_input, model_output, reader, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", spy)
    raw = {"scheme": "ort_int8_static", "calibration_rows": 40, "calibration_batch_size": 16}
    meta = quantize_variant("ort_int8_static", raw, tiny_trained, tmp_path / "s", CPU,
                            calibration=lambda: for_model(tiny_prepared, tiny_trained))
    data, prep = load_prepared(tiny_prepared)
    val, test = data["validation"]["input_ids"], data["test"]["input_ids"]
    ids = np.concatenate([f["input_ids"] for f in seen])
    want = pad_batch(val[:40], 50256, prep["max_length"])["input_ids"].numpy()
    assert [len(f["input_ids"]) for f in seen] == [16, 16, 8]
    np.testing.assert_array_equal(ids, want)
    test_rows = {tuple(r) for r in test}
    assert not any(tuple(int(t) for t in row[m.astype(bool)]) in test_rows
                   for row, m in zip(ids, np.concatenate([f["attention_mask"] for f in seen])))
    assert meta["calibration"] == {"rows": 40, "source": f"{tiny_prepared} validation split", "method": "minmax"}


def test_ort_variants_evaluate_like_any_other(tiny_prepared, tiny_trained, fp32_artifact, tmp_path):
    """Through the adapter: the same predictions path, sizes from the .onnx files, the runtime recorded."""
    from ptqflow.calibration import for_model
    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    params = EvalParams(device="cpu", batch_size=64)
    m_fp, p_fp = evaluate_variant("fp32", {"scheme": "fp32"}, fp32_artifact, tiny_prepared, params)
    for name, raw in ORT.items():
        quantize_variant(name, raw, tiny_trained, tmp_path / name, CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained))
        m, p = evaluate_variant(name, raw, tmp_path / name, tiny_prepared, params)
        agree = np.mean(p["predicted"].to_numpy() == p_fp["predicted"].to_numpy())
        assert agree >= (0.999 if name == "ort_fp32" else 0.9), (name, agree)
        assert m["runtime"]["provider"] == "CPUExecutionProvider" and m["runtime"]["intra_op_threads"] == torch.get_num_threads()
        onnx_bytes = sum(p.stat().st_size for p in (tmp_path / name).glob("model.onnx*"))
        assert m["size_on_disk"]["bytes"] == onnx_bytes and m["memory_footprint"]["bytes"] > 0
    fp32, int8 = ((tmp_path / n / "model.onnx.data").stat().st_size for n in ("ort_fp32", "ort_int8_dynamic"))
    projections = sum(m.weight.numel() for m in load_variant("fp32", {"scheme": "fp32"}, fp32_artifact, CPU)[0].modules()
                      if type(m).__name__ in ("Linear", "Conv1D"))
    assert fp32 - int8 >= 0.7 * 3 * projections  # 4 -> 1 byte per weight of every product (embeddings stay float)


@pytest.mark.parametrize(("raw", "message"), [
    ({"method": "kl"}, r"method must be one of 'minmax', 'entropy', 'percentile', got 'kl'"),
    ({"op_types": ["Conv"]}, r"op_types must be a non-empty list of MatMul, Gemm, got \['Conv'\]"),
    ({"opset": 13}, r"opset must be an integer in \[18, 23\] for the dynamo exporter, got 13"),
    ({"calibration_rows": 0}, r"calibration_rows must be a positive integer, got 0"),
    ({"format": "qdq"}, r"format must be one of 'QDQ', 'QOperator', got 'qdq'"),
    ({"calibraton_rows": 8}, r"unknown key variants.v.calibraton_rows \(did you mean 'calibration_rows'\?\)"),
    ({"compile": "default"}, r"variants.v.compile: scheme ort_int8_static runs in its own runtime, not torch.compile"),
])
def test_bad_options_are_one_line(raw, message):
    with pytest.raises(PtqflowError, match=message) as err:
        resolve("v", {"scheme": "ort_int8_static", **raw})
    assert "\n" not in str(err.value)


def test_where_each_runs_is_said_not_fallen_back_from():
    assert "CUDA execution provider" in unavailable("f16", {"scheme": "ort_fp16"}, CPU)
    assert unavailable("q", {"scheme": "ort_int8_dynamic"}, CPU) is None
    assert "CPU execution provider" in unavailable("q", {"scheme": "ort_int8_dynamic"}, torch.device("cuda"))


def test_a_failed_export_leaves_nothing(tmp_path, tiny_trained, monkeypatch):
    from ptqflow.runtimes import onnx_export

    def broken(*args, **kwargs):
        raise PtqflowError("parity: simulated")

    monkeypatch.setattr(onnx_export, "parity_check", broken)
    with pytest.raises(PtqflowError, match="simulated"):
        quantize_variant("ort_fp32", {"scheme": "ort_fp32"}, tiny_trained, tmp_path / "out", CPU)
    assert not (tmp_path / "out").exists()
