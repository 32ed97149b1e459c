"""OpenVINO variants: conversion parity and int8 layers counted in the compiled model for every family, calibration
on the first validation rows only, accuracy control's budget from the report, evaluation through the adapter,
skips said with the reason, one-line rejection of bad options; an architecture without SDPA attention through every
stage with the exported runtimes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ptqflow.errors import PtqflowError
from ptqflow.machine import exact_int8_products
from ptqflow.quantize import load_variant, quantize_variant, resolve, unavailable

from .conftest import GPT2
from .families import PROJECTIONS, make_base, random_calibration

pytest.importorskip("openvino")
pytest.importorskip("nncf")

CPU = torch.device("cpu")
OV = {
    "ov_fp32": {"scheme": "ov_fp32"},
    "ov_int8": {"scheme": "ov_int8", "calibration_rows": 24, "calibration_batch_size": 8},
}


def test_every_family_converts_with_parity_and_runs_every_projection_in_int8(fresh_family):
    """Each family converts with f32 parity at another batch and length than the example (padded rows included);
    ov_int8's compiled model runs every body projection's matrix product in u8/i8 and the head in float."""
    from ptqflow.batches import pad_batch
    from ptqflow.quantize.common import load_finetuned
    from ptqflow.structure import of

    family, root = fresh_family
    ref = load_finetuned(root / "model")
    rows = [list(range(5, 5 + n)) for n in (20, 7, 13)]
    batch = pad_batch(rows, ref.config.pad_token_id or 0, None, [[0] * len(r) for r in rows] if family == "bert" else None)
    with torch.no_grad():
        want = ref(**batch).logits
    for name, raw in OV.items():
        meta = quantize_variant(name, raw, root / "model", root / name, CPU, calibration=random_calibration)
        assert meta["parity_max_abs_diff"] < 1e-4, (family, meta["parity_max_abs_diff"])
        assert meta["openvino"]["attention"] == "sdpa"
        model, _ = load_variant(name, raw, root / name, CPU)
        with torch.no_grad():
            got = model(**batch).logits
        # int8: 5% of the largest logit; where the CPU has no VNNI the overflow fix keeps 7-bit weights (twice the
        # weight step of (1), so twice the bound): machine.exact_int8_products, the decision the scheme takes
        tolerance = 1e-4 if name == "ov_fp32" else 0.05 * float(want.abs().max()) * (1 if exact_int8_products() else 2) + 1e-3
        assert float((got - want).abs().max()) <= tolerance, (family, name)
        assert {p.name for p in (root / name).iterdir()} == {"config.json", "model.xml", "model.bin", "ptqflow.json"}
        assert model.ptqflow_runtime["inference_precision"] == "f32" and model.ptqflow_runtime["threads"] == torch.get_num_threads()
        if name == "ov_int8":
            from ptqflow.runtimes.openvino import int8_layers

            ran = int8_layers(model.ov_model, model.compiled)  # counted again here, in the model evaluation loads
            assert sorted(ran["int8_modules"]) == sorted(of(ref).projections), family
            assert meta["int8_precision"]["compiled_int8"] == ran["compiled_int8"] > 0
            if exact_int8_products():  # with VNNI / AMX the CPU plugin runs every quantized product in int8
                assert ran["compiled_int8"] == len(ran["int8_modules"]) and "differs" not in meta["int8_precision"]
            assert ran["float_modules"] == list(of(ref).head)  # the head stays float
            assert meta["quantized_modules"] == PROJECTIONS[family] and meta["mac_share_8bit"] == 1.0
            assert meta["calibration"]["rows"] == 24 and "random" in meta["calibration"]["source"]
    fp32, int8 = ((root / n / "model.bin").stat().st_size for n in OV)
    assert int8 < 0.6 * fp32  # int8 weights stored as int8, not float


def test_what_the_cpu_plugin_ran_in_int8_is_warned_and_recorded_and_stops_only_at_none():
    """OpenVINO's CPU plugin decides per CPU (on an AVX2-only CPU it kept 4 of 16 projections in float): a
    difference from what was asked is a warning and a record, nothing in int8 is the one stop."""
    from ptqflow.quantize.ov import ran_in_int8

    asked = [f"layer.{i}" for i in range(16)]
    with pytest.warns(UserWarning, match="runs 12 of the 16 projections asked for in int8"):
        record = ran_in_int8(asked, asked[:12], 12, accuracy_control=False)
    assert record["differs"] and record["float_in_graph"] == asked[12:] and record["compiled_int8"] == 12
    with pytest.warns(UserWarning, match="runs 12 of the 16"):  # quantized in the graph, compiled in float
        assert ran_in_int8(asked, asked, 12, accuracy_control=False)["differs"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "differs" not in ran_in_int8(asked, asked, 16, accuracy_control=False)
        assert "differs" not in ran_in_int8(asked, asked[:10], 10, accuracy_control=True)  # reverted on purpose: said elsewhere
    with pytest.raises(PtqflowError, match="runs no matrix product in int8 on this CPU"):
        ran_in_int8(asked, asked, 0, accuracy_control=False)


def test_overflow_fix_follows_the_cpu_flags():
    """u8 x s8 sums saturate without VNNI: ov_int8 (overflow_fix auto) and the ORT int8 schemes (reduce_range auto)
    quantize weights to 7 bits there, decided from the flags (assumed here) like every other CPU decision."""
    from ptqflow.machine import assume_cpu
    from ptqflow.quantize import resolve
    from ptqflow.quantize.ort import reduce_range

    _, options = resolve("ort_int8_dynamic", {"scheme": "ort_int8_dynamic"})
    with assume_cpu(["avx2", "fma", "f16c"]):
        assert reduce_range(options) and not exact_int8_products()
    with assume_cpu(["avx2", "avx512f", "avx512_vnni"]):
        assert not reduce_range(options) and exact_int8_products()
    _, fixed = resolve("ort_int8_dynamic", {"scheme": "ort_int8_dynamic", "reduce_range": False})
    with assume_cpu(["avx2"]):
        assert not reduce_range(fixed)


def test_ignored_scope_keeps_named_projections_float(tmp_path):
    from ptqflow.benchmark import build_from_config

    build_from_config(str(make_base("bert", GPT2, tmp_path / "base")), {}, tmp_path / "model")
    raw = {**OV["ov_int8"], "ignored_scope": [r"bert\.encoder\.layer\.1\..*"]}
    meta = quantize_variant("ov_int8", raw, tmp_path / "model", tmp_path / "ignored", CPU, calibration=random_calibration)
    assert meta["quantized_modules"] == PROJECTIONS["bert"] - 6  # a BERT layer has 6 projections
    assert all(name.startswith("bert.encoder.layer.1.") for name in meta["kept_float"]) and len(meta["kept_float"]) == 6
    assert 0 < meta["mac_share_8bit"] < 1


def test_calibration_reads_the_first_validation_rows_only(tiny_prepared, tiny_trained, tmp_path, monkeypatch):
    """NNCF sees the first calibration_rows rows of the validation split, padded as the benchmark pads, and no test row."""
    import nncf

    from ptqflow.batches import pad_batch
    from ptqflow.calibration import for_model
    from ptqflow.data import load_prepared

    seen = []
    real = nncf.quantize

    def spy(model, dataset, **kwargs):
        seen.extend(dataset.get_inference_data())
        assert kwargs["subset_size"] == len(seen)  # every batch is used
        return real(model, dataset, **kwargs)

    monkeypatch.setattr(nncf, "quantize", spy)
    raw = {"scheme": "ov_int8", "calibration_rows": 40, "calibration_batch_size": 16}
    meta = quantize_variant("ov_int8", raw, tiny_trained, tmp_path / "q", CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained))
    data, prep = load_prepared(tiny_prepared)
    ids = np.concatenate([f["input_ids"] for f in seen])
    assert [len(f["input_ids"]) for f in seen] == [16, 16, 8]
    np.testing.assert_array_equal(ids, pad_batch(data["validation"]["input_ids"][:40], 50256, prep["max_length"])["input_ids"].numpy())
    test_rows = {tuple(r) for r in data["test"]["input_ids"]}
    assert not any(tuple(int(t) for t in row[m.astype(bool)]) in test_rows
                   for row, m in zip(ids, np.concatenate([f["attention_mask"] for f in seen])))
    assert meta["calibration"] == {"rows": 40, "source": f"{tiny_prepared} validation split"}


def test_accuracy_control_takes_the_reports_budget_and_says_what_it_reverted(tiny_prepared, tiny_trained, fp32_artifact, tmp_path):
    """max_drop null = the budget given by the stage (report.max_accuracy_drop); the options are stored as written;
    what NNCF reverted to float is the complement of what ran in int8; evaluation goes through the adapter."""
    from ptqflow.calibration import for_model
    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    raw = {"scheme": "ov_int8_accuracy_control", "calibration_rows": 32, "validation_rows": 40}
    meta = quantize_variant("ac", raw, tiny_trained, tmp_path / "ac", CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained),
                            max_drop=0.02)
    assert meta["options"]["max_drop"] is None and meta["max_drop_used"] == 0.02
    control = meta["accuracy_control"]
    assert control["max_drop"] == 0.02 and control["validation_rows"] == 40
    assert meta["quantized_modules"] + len(control["reverted_to_float"]) == PROJECTIONS["gpt2"]
    assert meta["search_seconds"] > 0
    params = EvalParams(device="cpu", batch_size=64)
    _, p_fp = evaluate_variant("fp32", {"scheme": "fp32"}, fp32_artifact, tiny_prepared, params)
    m, p = evaluate_variant("ac", raw, tmp_path / "ac", tiny_prepared, params)
    assert np.mean(p["predicted"].to_numpy() == p_fp["predicted"].to_numpy()) >= 0.9
    assert m["runtime"]["runtime"].startswith("openvino ") and m["size_on_disk"]["bytes"] == sum(
        (tmp_path / "ac" / f).stat().st_size for f in ("model.xml", "model.bin"))
    assert m["memory_footprint"]["bytes"] > 0


@pytest.mark.parametrize(("raw", "message"), [
    ({"scheme": "ov_int8", "precision": "fp16"}, r"precision must be one of 'f32', 'bf16', got 'fp16'"),
    ({"scheme": "ov_int8", "smooth_quant_alpha": 2}, r"smooth_quant_alpha must be an alpha in \[0, 1\] or null, got 2"),
    ({"scheme": "ov_int8", "ignored_scope": ["bert.(layer"]}, r"ignored_scope must be a list of regular expressions"),
    ({"scheme": "ov_int8", "calibration_rows": 0}, r"calibration_rows must be a positive integer, got 0"),
    ({"scheme": "ov_int8_accuracy_control", "max_drop": 1.5}, r"max_drop must be a fraction in \[0, 1\) or null, got 1.5"),
    ({"scheme": "ov_fp32", "attention": "flash"}, r"attention must be one of 'auto', 'sdpa', 'eager', got 'flash'"),
    ({"scheme": "ov_fp32", "compile": "default"}, r"variants.v.compile: scheme ov_fp32 runs in its own runtime, not torch.compile"),
])
def test_bad_options_are_one_line(raw, message):
    with pytest.raises(PtqflowError, match=message) as err:
        resolve("v", raw)
    assert "\n" not in str(err.value)


def test_where_each_runs_is_said_not_fallen_back_from(monkeypatch):
    from ptqflow import machine

    assert unavailable("v", {"scheme": "ov_int8"}, CPU) is None
    assert "OpenVINO's CPU plugin" in unavailable("v", {"scheme": "ov_fp32"}, torch.device("cuda"))
    monkeypatch.setattr(machine, "cpu_info", lambda *a, **k: {"model": "x", "flags": ["avx2", "avx512f", "avx512_vnni"]})
    for raw in ({"scheme": "ov_bf16"}, {"scheme": "ov_int8", "precision": "bf16"}):
        assert "bfloat16 is not native on this CPU" in unavailable("v", raw, CPU)
    monkeypatch.setattr(machine, "cpu_info", lambda *a, **k: {"model": "x", "flags": ["avx512_bf16"]})
    assert unavailable("v", {"scheme": "ov_bf16"}, CPU) is None


def test_a_failed_conversion_leaves_nothing(tmp_path, tiny_trained, monkeypatch):
    from ptqflow.runtimes import openvino

    def broken(*args, **kwargs):
        raise PtqflowError("parity: simulated")

    monkeypatch.setattr(openvino, "parity_check", broken)
    with pytest.raises(PtqflowError, match="simulated"):
        quantize_variant("ov_fp32", {"scheme": "ov_fp32"}, tiny_trained, tmp_path / "out", CPU)
    assert not (tmp_path / "out").exists()


NO_SDPA = ("DebertaV2Config", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                               "max_position_embeddings": 64})


def test_an_architecture_without_sdpa_runs_every_stage_on_the_exported_runtimes(tmp_path, shared):
    """DeBERTa-v2 has no SDPA attention in transformers: `attention: auto` exports it (ONNX) and converts it
    (OpenVINO) with eager attention, and every stage completes, package included (run in this process, as the
    other families' pipeline test)."""
    from .families import TOKENIZER_FILES
    from .pipeline_project import make_project, run_in_process, stage_commands

    import shutil

    import transformers

    variants = ["fp32", "int8_dynamic", "ort_int8_dynamic", "ov_fp32", "ov_int8"]
    env = make_project(tmp_path, shared, variants)
    env["PTQFLOW_TRACKING"] = "0"
    base = tmp_path / "tiny-deberta"
    getattr(transformers, NO_SDPA[0])(vocab_size=50257, **NO_SDPA[1]).save_pretrained(str(base))
    for name in TOKENIZER_FILES:
        if (shared / "models" / "gpt2" / name).is_file():
            shutil.copy(shared / "models" / "gpt2" / name, base / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["model"].update(base=str(base), overrides={})
    params["package"].update(registered_model=None, variant="ov_int8")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_in_process(tmp_path, env, stage_commands(tmp_path, skip=()))
    assert "package: ov_int8" in out
    comparison = json.loads((tmp_path / "metrics/comparison.json").read_text())
    assert set(comparison["variants"]) == set(variants) and not comparison["skipped"]
    for name in ("ort_int8_dynamic", "ov_fp32", "ov_int8"):
        meta = json.loads((tmp_path / "models/quantized" / name / "ptqflow.json").read_text())
        assert (meta.get("onnx") or meta.get("openvino"))["attention"] == "eager", name
    from ptqflow.predict import load_packaged

    labels = load_packaged(tmp_path / "models" / "recommended").predict(["Stocks rallied", "The team won the cup final"])
    assert set(labels) <= {"World", "Sports", "Business", "Sci/Tech"} and len(labels) == 2


@pytest.mark.parametrize("variant", ["ov_fp32", "ort_fp32"])
def test_an_architecture_a_runtime_cannot_take_is_skipped_with_the_reason(tmp_path, tiny_trained, tiny_prepared, monkeypatch, variant):
    """A converter / exporter that fails on the architecture: the variant's artifact says skipped with the first line
    of why, holds nothing else, and evaluation reports it skipped (the run goes on) instead of stopping the pipeline."""
    import openvino

    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported operation: aten::made_up\nmore detail")

    monkeypatch.setattr(openvino, "convert_model", unsupported)
    monkeypatch.setattr(torch.onnx, "export", unsupported)
    raw = {"scheme": variant}
    meta = quantize_variant(variant, raw, tiny_trained, tmp_path / variant, CPU)
    runtime = "OpenVINO conversion" if variant == "ov_fp32" else "ONNX export (dynamo, opset 18)"
    assert meta["skipped"] == f"{runtime} of gpt2 failed: Unsupported operation: aten::made_up"
    assert [p.name for p in (tmp_path / variant).iterdir()] == ["ptqflow.json"]
    metrics, predictions = evaluate_variant(variant, raw, tmp_path / variant, tiny_prepared, EvalParams(device="cpu"))
    assert metrics["skipped"] == meta["skipped"] and predictions.empty


def test_every_projection_gets_a_named_format_even_when_the_graph_renamed_its_layer():
    """A fake runtime record: 3 projections, one found by its layer name; the others' MatMuls carry no module
    name, so their formats come from the unnamed MatMuls' element types (never '?')."""
    from collections import Counter

    from ptqflow.quantize.ov_weights import projection_formats

    found, counted = projection_formats(("a", "b", "c"), {"a": "u4", "score": "f32"}, Counter({"f32": 2}))
    assert found == {"a": "u4", "b": "f32", "c": "f32"} and counted == Counter({"u4": 1, "f32": 2})
    found, counted = projection_formats(("a", "b", "c"), {"a": "u4"}, Counter({"u4": 1, "f32": 1}))
    assert found["b"] == found["c"] == "unnamed: u4 x1 / f32 x1" and counted == Counter({"u4": 2, "f32": 1})
    found, counted = projection_formats(("a", "b"), {"a": "u4"}, Counter())
    assert found["b"] == "no constant weight in the graph" and "?" not in counted
