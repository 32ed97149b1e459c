"""Per-projection sensitivity, the accuracy-budgeted search and the recovery options of `int8_static` (SmoothQuant,
percentile ranges, fewer bits) on the tiny GPT-2, on the CPU, calibrated and scored on validation rows only."""

from __future__ import annotations

import pytest
import torch

from ptqflow.calibration import for_model
from ptqflow.quantize import load_variant, quantize_variant

CPU = torch.device("cpu")


def _quantize(tmp_path, tiny_trained, tiny_prepared, name, **options):
    raw = {"scheme": "int8_static", "dtype": "float32", "calibration_rows": 64, **options}
    meta = quantize_variant(name, raw, tiny_trained, tmp_path / name, CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained))
    return raw, meta


def test_budget_keeps_the_most_sensitive_projections_until_the_validation_drop_fits(tmp_path, tiny_trained, tiny_prepared):
    """3-bit activations hurt; with a zero budget and `budget_fallback: float` the search keeps projections in float,
    most sensitive first, until the validation accuracy equals the float model's, and says what share of MACs
    stayed in low bits."""
    raw, meta = _quantize(tmp_path, tiny_trained, tiny_prepared, "b", activation_bits=3, weight_bits=4,
                          budget="auto", budget_fallback="float", max_drop=0.0, sensitivity_rows=96)
    table = meta["sensitivity"]["by_projection"]
    assert len(table) == 8 and {v["layer"] for v in table.values()} == {"0", "1"}
    assert {v["type"] for v in table.values()} == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert all(v["kl"] >= 0 and v["nmse"] >= 0 for v in table.values())
    budget = meta["budget"]
    ranked = sorted(table, key=lambda n: -table[n]["kl"])
    assert budget["kept"] == ranked[: budget["k"]] and budget["validation_drop"] <= budget["validation_drop_bound"] <= 0.0
    assert budget["float"] == budget["kept"] and budget["fallback"] == []
    assert budget["rows"] == 48  # every validation row of the tiny split (10% of 480)
    assert budget["tried"][0]["raised"] == 0 and budget["tried"][0]["drop"] > 0  # the all-quantized model lost accuracy
    assert meta["quantized_modules"] == 8 - budget["k"] and meta["kept_bf16"] == [n for n in table if n in budget["kept"]]
    assert 0.0 <= meta["mac_share_8bit"] < 1.0 and set(meta["formats"]) <= {"W4A3", "float"}
    model, _ = load_variant("b", raw, tmp_path / "b", CPU)
    assert model.ptqflow_runtime["w8a8_layers"] == 8 - budget["k"]
    assert budget["seconds"] > 0
    from ptqflow.sensitivity_report import budget_rows

    nncf = {"mac_share_8bit": 0.5, "search_seconds": 31.0, "accuracy_control": {"max_drop": 0.005, "validation_rows": 878,
                                                                               "reverted_to_float": ["a", "b"]}}
    rows = budget_rows({"b": {"quantization": meta}, "ac": {"quantization": nncf}, "fp32": {}})
    assert len(rows) == 2 and f"| {budget['k']} |" in rows[0] and f"{budget['seconds']} |" in rows[0]
    assert rows[1] == "| `ac` | NNCF `quantize_with_accuracy_control` (point estimate) | 0.50 | 878 | 2 | 50.0% | 31.0 |"


def test_budget_falls_back_to_w8a8_before_float(tmp_path, tiny_trained, tiny_prepared):
    """The default `budget_fallback: w8a8`: projections leave W4A3 for W8A8 (the same int8 GEMM) first, most sensitive
    first; float only for those W8A8 cannot hold. Each layer's Q_x is stored, so the artifact mixes bit widths."""
    from ptqflow.quantize.int8_static import Int8StaticLinear

    raw, meta = _quantize(tmp_path, tiny_trained, tiny_prepared, "l", activation_bits=3, weight_bits=4,
                          budget="auto", max_drop=0.0, sensitivity_rows=96)
    budget = meta["budget"]
    assert budget["ladder"] == ["W4A3", "W8A8", "float"] and budget["tried"][0]["rung"] == "W4A3"
    assert budget["validation_drop_bound"] <= 0.0
    assert set(budget["fallback"]) | set(budget["float"]) == set(budget["kept"]) and not set(budget["fallback"]) & set(budget["float"])
    if budget["float"]:  # float only once every projection had been tried in W8A8
        assert any(t["rung"] == "W8A8" for t in budget["tried"])
    counts = {f: v["projections"] for f, v in meta["formats"].items()}
    assert sum(counts.values()) == 8 and counts.get("W8A8", 0) == len(budget["fallback"]) and counts.get("float", 0) == len(budget["float"])
    assert meta["quantized_modules"] == 8 - len(budget["float"])
    model, _ = load_variant("l", raw, tmp_path / "l", CPU)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Int8StaticLinear)}
    assert len(layers) == 8 - len(budget["float"])
    assert {n for n, m in layers.items() if m.qmax == 127.0} == set(budget["fallback"])
    assert all(m.qmax == 3.0 for n, m in layers.items() if n not in budget["fallback"])


def test_smoothquant_and_percentile_ranges(tmp_path, tiny_trained, tiny_prepared, fp32_artifact):
    from ptqflow.data import load_prepared
    from ptqflow.evaluate import predict

    _, plain = _quantize(tmp_path, tiny_trained, tiny_prepared, "plain")
    raw, smooth = _quantize(tmp_path, tiny_trained, tiny_prepared, "smooth", smoothquant=0.5, range="percentile", percentile=99.9)
    assert "SmoothQuant alpha 0.5" in smooth["runtime_dtype"] and "99.9th percentile" in smooth["runtime_dtype"]
    # smoothing moves range out of the activations: the largest smoothed input range is below the plain one
    assert max(smooth["input_absmax"].values()) < max(plain["input_absmax"].values())
    model, _ = load_variant("smooth", raw, tmp_path / "smooth", CPU)
    layer = next(m for m in model.modules() if hasattr(m, "input_smooth"))
    assert layer.input_smooth.shape == (layer.in_features,) and bool((layer.input_smooth > 0).all())
    fp32, _ = load_variant("fp32", {"scheme": "fp32"}, fp32_artifact, CPU)
    ids = load_prepared(tiny_prepared)[0]["test"]["input_ids"]
    assert (predict(model, ids, 64, 50256) == predict(fp32, ids, 64, 50256)).mean() >= 0.9


def test_smoothing_is_exact_in_float():
    """x' W'^T = x W^T: formula (0) changes nothing before rounding."""
    from ptqflow.quantize.int8_static import Int8StaticOptions, build_layer

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(10, 64) * torch.linspace(0.1, 30, 64)  # a few outlier channels
    s = (x.abs().amax(0) ** 0.5 / linear.weight.abs().amax(0) ** 0.5)
    assert torch.allclose((x / s) @ (linear.weight * s).t(), x @ linear.weight.t(), rtol=1e-4, atol=1e-4)
    layer = build_layer(linear, {"smooth": s, "range": float((x / s).abs().max())}, Int8StaticOptions(dtype="float32", smoothquant=0.5), CPU)
    with torch.no_grad():
        err = (layer(x) - linear(x)).abs().max()
    assert float(err) < 0.05 * float(linear(x).abs().max())


def test_bad_options_are_one_line():
    from ptqflow.errors import PtqflowError
    from ptqflow.quantize import resolve

    with pytest.raises(PtqflowError, match="activation_bits must be an integer in 2..8"):
        resolve("x", {"scheme": "int8_static", "activation_bits": 9})
    with pytest.raises(PtqflowError, match="smoothquant must be an alpha in"):
        resolve("x", {"scheme": "int8_static", "smoothquant": 1.5})


def test_the_size_search_picks_the_fewest_embedding_bits_that_fit(tmp_path, tiny_trained, tiny_prepared):
    """bnb_nf4 with embeddings: auto tries 2, 3, 4 bits in that order on the validation rows, stops at the first whose
    drop bound fits, stores that mode, and loads it back; a zero budget with a 0.5 'bound' (the point estimate)
    still records every try. The options stay as written; the budget used is the stage's."""
    from ptqflow.quantize.common import weights_bytes
    from ptqflow.quantize.embedding import QuantizedEmbedding

    raw = {"scheme": "bnb_nf4", "embeddings": "auto"}
    meta = quantize_variant("s", raw, tiny_trained, tmp_path / "s", CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained),
                            max_drop=0.9)
    search = meta["embedding_search"]
    assert search["chosen"] == "int2" and [t["candidate"] for t in search["tried"]] == ["int2"]  # a 90-point budget: 2 bits fit
    assert meta["embeddings"] == "int2" and meta["options"]["max_drop"] is None and meta["max_drop_used"] == 0.9
    assert search["rows"] == 48 and search["seconds"] >= 0
    model, _ = load_variant("s", raw, tmp_path / "s", CPU)
    tables = [m for m in model.modules() if isinstance(m, QuantizedEmbedding)]
    assert len(tables) == 2 and all(m.mode == "int2" for m in tables)
    strict = {"scheme": "bnb_nf4", "embeddings": "auto", "max_drop": 0.0, "budget_confidence": 0.5}
    meta = quantize_variant("z", strict, tiny_trained, tmp_path / "z", CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained))
    tried = [t["candidate"] for t in meta["embedding_search"]["tried"]]
    assert tried == ["int2", "int3", "int4"][: len(tried)] and "max_drop_used" not in meta
    chosen = meta["embedding_search"]["chosen"]
    assert meta["embeddings"] == (chosen or "keep") and (chosen is None or meta["embedding_search"]["tried"][-1]["bound"] <= 0.0)
    assert weights_bytes(tmp_path / "s") < weights_bytes(tmp_path / "z") or meta["embeddings"] == "int2"
    from ptqflow.sensitivity_report import budget_rows

    row = budget_rows({"z": {"quantization": meta}})[0]
    assert row.startswith("| `z` | ptqflow size search") and "| 0.00 | 48 |" in row
