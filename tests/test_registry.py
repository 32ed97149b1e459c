"""The variant registry and params validation."""

from __future__ import annotations

import pytest
import yaml

from ptqflow.config import DataParams, EvalParams, ModelParams, ReportParams, TrainParams, build, load_section
from ptqflow.errors import PtqflowError
from ptqflow.quantize import SCHEMES, resolve
from ptqflow.quantize.registry import COMMON_KEYS, run_options

from .conftest import ROOT


def test_every_variant_in_params_yaml_resolves():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params["variants"]) >= {"fp32", "int8_scratch", "int8_bnb", "nf4_bnb"}
    for path in (ROOT / "params.yaml", ROOT / "benchmarks" / "variants.yaml", ROOT / "benchmarks" / "variants-fast.yaml"):
        for name, raw in yaml.safe_load(path.read_text())["variants"].items():
            scheme, options = resolve(name, raw)
            assert scheme.name == raw["scheme"]
            assert run_options(name, raw).compile == raw.get("compile", "none")
            for key, value in raw.items():
                if key not in COMMON_KEYS:
                    assert getattr(options, key) == value, (path.name, name, key)


def test_every_section_of_params_yaml_validates():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for cls, name in [(DataParams, "data"), (ModelParams, "model"), (TrainParams, "train"), (EvalParams, "eval"), (ReportParams, "report")]:
        load_section(cls, name, params)


def test_registered_schemes():
    assert {"fp32", "int8_scratch", "bnb_int8", "bnb_nf4"} <= set(SCHEMES)


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"scheme": "int4_magic"}, "not a registered scheme"),
        ({"llm_int8_threshold": 6.0}, "needs a 'scheme' key"),
        ({"scheme": "bnb_int8", "llm_int8_treshold": 6.0}, "did you mean 'llm_int8_threshold'"),
        ({"scheme": "bnb_nf4", "compute_dtype": "float8"}, "compute_dtype must be one of"),
        ({"scheme": "bnb_int8", "llm_int8_threshold": "high"}, "must be a number"),
    ],
)
def test_bad_variants_get_one_clear_error(raw, message):
    with pytest.raises(PtqflowError, match=message):
        resolve("v", raw)


@pytest.mark.parametrize(
    "cls,raw,message",
    [
        (TrainParams, {"epochs": "three"}, "train.epochs must be a number"),
        (TrainParams, {"lr": 0}, "train.lr must be a number > 0"),
        (TrainParams, {"batch_size": 0}, "train.batch_size must be an integer > 0"),
        (DataParams, {"val_fraction": 1.5}, r"data.val_fraction must be a number in \(0, 1\)"),
        (ModelParams, {"init": "random"}, "model.init must be one of"),
        (ModelParams, {"overrides": {"n_layer": [1, 2]}}, "model.overrides.n_layer must be a number"),
    ],
)
def test_bad_params_get_one_clear_error(cls, raw, message):
    name = {TrainParams: "train", DataParams: "data", ModelParams: "model"}[cls]
    with pytest.raises(PtqflowError, match=message):
        build(cls, raw, name)


def test_the_quantize_stage_prints_one_short_line():
    from ptqflow.quantize.registry import summary_line

    meta = {"variant": "v", "scheme": "int8_dynamic", "options": {"kernel": "auto"}, "runtime_dtype": "int8 x int8",
            "quantized_modules": 8, "quantized_embeddings": 2, "n_parameters": 123}
    assert summary_line("quantize@v", meta) == "quantize@v: int8 x int8; quantized: 8 projections, 2 embedding tables"
    assert summary_line("quantize@g", {"scheme": "fp8", "skipped": "needs CUDA"}) == "quantize@g: skipped on this machine: needs CUDA"
    assert summary_line("quantize@f", {"scheme": "fp32", "runtime_dtype": "float32"}) == "quantize@f: float32"


def test_a_half_type_this_cpu_emulates_is_skipped_with_the_reason_unless_forced(monkeypatch):
    """fp16 on a CPU without avx512_fp16 / amx_fp16 (the AMD EPYC kind) is skipped, decided from the flags; bf16
    with avx512_bf16 runs; `emulated: true` runs it anyway."""
    import torch

    from ptqflow import machine
    from ptqflow.quantize import resolve

    cpu = torch.device("cpu")
    amd = {"model": "AMD EPYC", "flags": ["avx512f", "avx512_vnni", "avx512_bf16"]}
    monkeypatch.setattr(machine, "cpu_info", lambda cpuinfo="/proc/cpuinfo": amd)
    scheme, options = resolve("fp16", {"scheme": "cast", "dtype": "float16"})
    why = scheme.available(options, cpu)
    assert why and "float16 is emulated on this CPU (AMD EPYC: no avx512_fp16 / amx_fp16" in why and "emulated: true" in why
    assert scheme.available(*resolve("bf16", {"scheme": "cast", "dtype": "bfloat16"})[1:], cpu) is None
    forced = resolve("fp16", {"scheme": "cast", "dtype": "float16", "emulated": True})[1]
    assert scheme.available(forced, cpu) is None
    assert scheme.available(options, torch.device("cuda")) is None  # GPUs have float16
    amx = {"model": "Intel Xeon", "flags": ["avx512_fp16", "amx_bf16", "amx_fp16"]}
    monkeypatch.setattr(machine, "cpu_info", lambda cpuinfo="/proc/cpuinfo": amx)
    assert scheme.available(options, cpu) is None


def test_variants_says_where_each_default_variant_runs_for_another_cpu(capsys):
    """`ptqflow variants --cpu-flags`: the same availability code as the stages, for the flags given (an AMX Xeon
    runs fp16 and the bf16 variants, a CPU without avx512_bf16 / fp16 skips them with the reason); this machine's
    own answer is untouched afterwards."""
    from ptqflow import machine
    from ptqflow.cli import main

    before = machine.cpu_info()
    main(["variants", "--set", "all", "--cpu-flags", "avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16"])
    amx = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    main(["variants", "--set", "all", "--cpu-flags", "avx2,fma"])
    old = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in ("fp16", "bf16", "ov_bf16"):
        assert amx[name].endswith(" runs") and " skipped: " in old[name], name
    assert "float16 is emulated" in old["fp16"] and "bfloat16 is not native" in old["ov_bf16"]
    for name in ("fp32", "int8_dynamic", "ov_int8", "ort_int8_dynamic"):
        assert amx[name].endswith(" runs") and old[name].endswith(" runs")
    assert " skipped: " in amx["int4_wo_ao"]  # CUDA-only on any CPU
    assert amx["int8_static_cpu"].endswith(" runs") and old["int8_static_cpu"].endswith(" runs")  # fbgemm: fast on both
    main(["variants", "--set", "all", "--cpu-kind", "avx2"])
    kind = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert {n: kind[n].endswith(" runs") for n in old if n in kind} == {n: old[n].endswith(" runs") for n in old if n in kind}
    assert machine.cpu_info() == before
