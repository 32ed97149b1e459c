"""Bad input reaches the stage that reads it: one clear line, exit status 2, and no output written."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import GPT2, ROOT

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
GOOD_TRAIN = "text,label\n" + "".join(f"story {i} of kind {i % 4},{i % 4}\n" for i in range(40))
GOOD_TEST = "text,label\n" + "".join(f"test story {i},{i % 4}\n" for i in range(8))


def run_stage(script: str, args: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """Run stages/<script> in this process as `python stages/<script> ARGS` would; returns exit status, stderr."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [script, "--no-tracking", *args])
    code = 0
    try:
        runpy.run_path(str(ROOT / "stages" / script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def project(tmp_path: Path, train: str | bytes = GOOD_TRAIN, test: str | bytes = GOOD_TEST, classes: bool = True, **overrides) -> Path:
    src = tmp_path / "raw"
    src.mkdir()
    for name, content in (("train.csv", train), ("test.csv", test)):
        if content is not None:
            (src / name).write_bytes(content.encode() if isinstance(content, str) else content)
    if classes:
        (src / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=str(src), max_length=16)
    params["model"].update(base=str(GPT2), init="scratch")
    params["model"]["overrides"] = {"n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 16}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


DATA_CASES = [
    ("missing_file", {"train": None}, r"no train \(or calibration\) file"),
    ("empty_file", {"train": ""}, "empty file"),
    ("header_only", {"train": "text,label\n"}, "no data rows"),
    ("no_text_column", {"train": "body,label\nhello,1\n"}, "no 'text' column"),
    ("no_label_column", {"train": "text,topic\nhello,1\n"}, "no 'label' column"),
    ("label_out_of_range", {"train": GOOD_TRAIN + "odd one,9\n"}, "label 9 in row 42 is outside 0..3"),
    ("label_not_in_classes", {"train": "text,label\na,World\nb,Cooking\n"}, "label 'Cooking' in row 3 is not a known class"),
    ("class_only_in_test", {"train": "".join(l + "\n" for l in GOOD_TRAIN.splitlines() if not l.endswith(",3"))},
     r"class id\(s\) \[3\] appear in test but not in train"),
    ("non_utf8", {"train": b"text,label\ncaf\xe9 \xff\xfe,1\n"}, "not UTF-8"),
    ("unclosed_quote", {"train": 'text,label\n"never closed,1\nnext,2\n'}, "cannot be parsed|no data rows|missing label"),
]


@pytest.mark.parametrize("name,files,message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_refused_by_prepare(tmp_path, monkeypatch, capsys, name, files, message):
    root = project(tmp_path, train=files.get("train", GOOD_TRAIN))
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    if name not in ("missing_file",):
        assert "train.csv" in err or "test" in err or "class" in err
    assert not (root / "data" / "prepared").exists() and not (root / "metrics" / "data.json").exists()
    assert not (root / "reports" / "data.json").exists()


def test_missing_data_folder(tmp_path, monkeypatch, capsys):
    root = project(tmp_path, data__source=str(tmp_path / "nowhere"))
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    assert code == 2 and "no such folder" in err and "ptqflow assets" in err


def test_accepted_oddities_are_counted(tmp_path, monkeypatch, capsys):
    """Blank texts are dropped and counted; duplicates kept and counted; a huge row is truncated, not a crash."""
    huge = "word " * 50_000
    train = GOOD_TRAIN + ",1\n" + '"   ",2\n' + "story 0 of kind 0,0\n" + f"{huge},3\n"
    root = project(tmp_path, train=train)
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    assert code == 0, err
    metrics = yaml.safe_load((root / "reports" / "data.json").read_text())
    assert metrics["dropped_empty_text"]["train"] == 2
    assert metrics["duplicate_rows"]["train"] == 1
    assert metrics["splits"]["train"]["rows"] + metrics["splits"]["validation"]["rows"] == 42
    assert sum(metrics["truncated_to_max_length"].values()) >= 1


PARAM_CASES = [
    ("finetune.py", {"train__epochs": "three"}, "train.epochs must be a number"),
    ("finetune.py", {"train__lr": 0}, "train.lr must be a number > 0"),
    ("finetune.py", {"train__lr": -1e-3}, "train.lr must be a number > 0"),
    ("finetune.py", {"train__batch_size": 0}, "train.batch_size must be an integer > 0"),
    ("finetune.py", {"train__optimizer": "sgd"}, "unknown key train.optimizer"),
    ("prepare.py", {"data__val_fraction": 0}, r"data.val_fraction must be a number in \(0, 1\)"),
    ("prepare.py", {"data__val_fraction": 1.2}, r"data.val_fraction must be a number in \(0, 1\)"),
    ("prepare.py", {"data__max_lenght": 64}, "did you mean 'max_length'"),
    ("finetune.py", {"model__init": "random"}, "model.init must be one of"),
]


@pytest.mark.parametrize("script,overrides,message", PARAM_CASES, ids=[f"{c[0]}:{next(iter(c[1]))}" for c in PARAM_CASES])
def test_bad_params_are_refused_before_any_work(tmp_path, monkeypatch, capsys, script, overrides, message):
    root = project(tmp_path, **overrides)
    code, err = run_stage(script, [], root, monkeypatch, capsys)
    assert code == 2 and message.split("(")[0].split("\\")[0] in err.replace("\\", ""), err
    assert len(err.strip().splitlines()) == 1
    assert not (root / "models").exists() and not (root / "data" / "prepared").exists()


@pytest.mark.parametrize(
    "variants,message",
    [
        ({"x": {"scheme": "int3_magic"}}, "not a registered scheme"),
        ({"x": {"scheme": "bnb_int8", "llm_int8_treshold": 6.0}}, "did you mean 'llm_int8_threshold'"),
        ({"x": {"scheme": "bnb_nf4", "compute_dtype": "float8"}}, "compute_dtype must be one of"),
    ],
)
def test_bad_variants_are_refused_by_quantize(tmp_path, monkeypatch, capsys, tiny_trained, variants, message):
    root = project(tmp_path, variants__x=variants["x"])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"] = variants
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    code, err = run_stage("quantize.py", ["--variant", "x", "--model", str(tiny_trained)], root, monkeypatch, capsys)
    assert code == 2 and message in err
    assert not (root / "models").exists()


def test_max_length_beyond_the_models_positions(tmp_path, monkeypatch, capsys, tiny_prepared):
    root = project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["overrides"]["n_positions"] = 16  # tiny_prepared has max_length 32
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    code, err = run_stage("finetune.py", ["--data", str(tiny_prepared)], root, monkeypatch, capsys)
    assert code == 2 and "data.max_length 32 exceeds the gpt2 model's 16 positions" in err
    assert not (root / "models").exists()


def test_pretrained_offline_says_how_to_go_on(tmp_path, monkeypatch, capsys, tiny_prepared):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = project(tmp_path, model__init="pretrained")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["pretrained"] = "gpt2"
    params["model"]["overrides"]["n_positions"] = 64
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    code, err = run_stage("finetune.py", ["--data", str(tiny_prepared)], root, monkeypatch, capsys)
    assert code == 2 and "Hugging Face Hub" in err and "model.init: scratch" in err
    assert not (root / "models").exists()


def test_truncated_finetuned_weights_are_detected(tmp_path, monkeypatch, capsys, tiny_trained):
    import shutil

    broken = tmp_path / "finetuned"
    shutil.copytree(tiny_trained, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    root = project(tmp_path)
    code, err = run_stage("quantize.py", ["--variant", "int8_scratch", "--model", str(broken)], root, monkeypatch, capsys)
    assert code == 2 and "cannot load the fine-tuned model" in err
    assert not list((root / "models" / "quantized").glob("*"))  # no artifact, no temporary folder left
