"""A classifier that is already trained, studied as it is (`model.init: finetuned`): its class names matched to the
data's by name (labels.py), nothing trained, the model handed on unchanged; a permuted head answers the same."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import AG_NEWS, GPT2, ROOT
from .pipeline_project import make_project, run_in_process, stage_commands
from .test_bad_input import run_stage

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


# ------------------------------------------------------------------------------------------- matching
def test_names_match_exactly_then_ignoring_case_and_spaces_in_any_order():
    from ptqflow.labels import match

    assert match(["Sports", "World", "Sci/Tech", "Business"], CLASSES) == ([1, 0, 3, 2], [])
    assert match([" sports", "WORLD", "sci/tech ", "business"], CLASSES)[0] == [1, 0, 3, 2]
    order, notes = match(["science_technology", "world", "sports", "business"], CLASSES, {"science_technology": "Sci/Tech"})
    assert order == [3, 0, 1, 2] and not notes


def test_generic_names_are_the_data_ids_with_a_warning():
    from ptqflow.labels import match

    order, notes = match(["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"], CLASSES)
    assert order == [0, 1, 2, 3] and len(notes) == 1 and "LABEL_0 = 'World'" in notes[0]


@pytest.mark.parametrize("model,label_map,message", [
    (["World", "Sports", "Business"], {}, "the model has 3 classes and the data 4"),
    (["World", "Sports", "Business", "Cooking"], {}, "cannot match the model's class(es) 'Cooking'"),
    (["World", "Sports", "Business", "Cooking"], {"Cooking": "Food"}, "maps to 'Food', not classes of the data"),
    (["World", "Sports", "Business", "Cooking"], {"Baking": "World"}, "names 'Baking', not classes of the model"),
    (["World", "world", "Business", "Sci/Tech"], {"world": "World"}, "several model classes match the data's 'World'"),
    (["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_7"], {}, "not LABEL_0..LABEL_3"),
])
def test_unmatched_names_are_one_line_naming_both_sides(model, label_map, message):
    from ptqflow.errors import PtqflowError
    from ptqflow.labels import match

    with pytest.raises(PtqflowError) as err:
        match(model, CLASSES, label_map)
    text = str(err.value)
    assert message in text and "\n" not in text
    if "not classes of the model" not in text and "LABEL_0..LABEL_3" not in text:
        assert "data: 'World'" in text and "model (config.id2label)" in text


def test_chance_is_the_most_common_class_or_one_in_k():
    from ptqflow.labels import chance_check

    assert chance_check(60, 100, [25, 25, 25, 25])[0]
    assert not chance_check(27, 100, [25, 25, 25, 25])[0]
    assert not chance_check(80, 100, [85, 5, 5, 5])[0]  # below always answering the big class


# ------------------------------------------------------------------------------------- the model folders
def permuted(src: Path, out: Path, order: list[int], drop_pad: bool = False) -> Path:
    """`src`'s classifier with its head's output rows and config.id2label re-ordered (output j = old output
    order[j]): the same classifier, another label order. `drop_pad`: also no pad_token_id (a decoder shipped so)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ptqflow.structure import of

    model = AutoModelForSequenceClassification.from_pretrained(str(src))
    head = model.get_submodule(of(model).head[-1])
    with torch.no_grad():
        head.weight.copy_(head.weight[order])
        if head.bias is not None:
            head.bias.copy_(head.bias[order])
    names = [model.config.id2label[i] for i in order]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    if drop_pad:
        model.config.pad_token_id = None
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


def labelled_folder(out: Path, names: list[str], family: str = "gpt2") -> Path:
    """A fresh-weight tiny classifier of `family` whose head is named `names` (config.id2label), tokenizer beside it."""
    import transformers

    from .families import FAMILIES, make_base

    make_base(family, GPT2, out)
    config = transformers.AutoConfig.from_pretrained(str(out))
    config.id2label, config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    config.pad_token_id = 50256 if family == "gpt2" else 0
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(str(out))
    assert FAMILIES[family]
    return out


def given_project(root: Path, shared: Path, model_dir: Path, variants: list[str], **model) -> dict:
    """A throw-away project (pipeline_project.make_project) that studies `model_dir` as given."""
    env = make_project(root, shared, variants)
    env["PTQFLOW_TRACKING"] = "0"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source=str(AG_NEWS), max_train_samples=960, max_test_samples=256)
    params["model"].update(init="finetuned", pretrained=str(model_dir), overrides={}, **model)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return env


def errors(err: str) -> list[str]:
    """The `error:` lines of a stage's stderr (progress bars of the model saving before it aside)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------- end to end
def test_a_permuted_head_gives_the_same_predictions_untrained_and_unchanged(tmp_path, shared, tiny_trained):
    """The tiny trained GPT-2 (a decoder: pad = EOS) studied as given through dvc.yaml's own stage commands, and
    the same classifier saved with its head's rows and id2label permuted (and no pad token id): no training, the
    model handed on byte for byte (the pad id set in config.json alone, recorded), identical predictions and
    accuracy; the report says the model was used as given."""
    mine = tmp_path / "mine"
    shutil.copytree(tiny_trained, mine)
    other = permuted(tiny_trained, tmp_path / "permuted", [2, 0, 3, 1], drop_pad=True)
    variants = ["fp32", "int8_scratch"]
    runs = {}
    for name, folder in (("mine", mine), ("permuted", other)):
        root = tmp_path / f"project-{name}"
        root.mkdir()
        env = given_project(root, shared, folder, variants)
        skip = ("package",) if name == "mine" else ("package", "benchmark", "report")
        out = run_in_process(root, env, [c for c in stage_commands(root, skip) if "assets" not in c])
        assert "used as given, not trained" in out and "Epoch" not in out and "train_runtime" not in out
        runs[name] = root
    for v in variants:
        a, b = ((runs[n] / "plots/predictions" / f"{v}.csv").read_text() for n in ("mine", "permuted"))
        assert a == b and a.count("\n") == 257
        acc = {n: json.loads((runs[n] / "reports/eval" / f"{v}.json").read_text())["accuracy"] for n in runs}
        assert acc["mine"] == acc["permuted"] > 0.3
    trained = {n: json.loads((runs[n] / "reports/train.json").read_text()) for n in runs}
    assert trained["mine"]["trained"] is False and trained["mine"]["changed"] == [] and trained["mine"]["train_rows"] == 0
    assert trained["mine"]["label_mapping"] == {c: c for c in CLASSES}
    assert trained["permuted"]["label_mapping"] == {c: c for c in ("Business", "World", "Sci/Tech", "Sports")}
    assert "pad_token_id set to 50256" in trained["permuted"]["changed"][0]
    assert trained["mine"]["val_accuracy"] == pytest.approx(trained["permuted"]["val_accuracy"])
    for f in ("model.safetensors", "config.json", "tokenizer.json"):  # handed on unchanged
        assert sha(runs["mine"] / "models/finetuned" / f) == sha(mine / f)
    assert sha(runs["permuted"] / "models/finetuned/model.safetensors") == sha(other / "model.safetensors")
    prepared = json.loads((runs["permuted"] / "data/prepared/meta.json").read_text())
    assert prepared["classes"] == ["Business", "World", "Sci/Tech", "Sports"] and prepared["data_classes"] == CLASSES
    report = (runs["mine"] / "reports/report.md").read_text()
    assert f"used as given, not trained ({mine})" in report.split("## Table 1")[0]


def test_a_model_at_chance_stops_with_the_labels_probably_mismatched(tmp_path, shared, monkeypatch, capsys):
    """A fresh-weight BERT (an encoder) named with the data's classes scores at chance on the validation split:
    the finetune stage stops with one line, exit 2, and writes nothing."""
    folder = labelled_folder(tmp_path / "random-bert", CLASSES, "bert")
    root = tmp_path / "project"
    root.mkdir()
    env = given_project(root, shared, folder, ["fp32"])
    run_in_process(root, env, [["python", "stages/prepare.py", "--no-tracking"]])
    code, err = run_stage("finetune.py", [], root, monkeypatch, capsys)
    assert code == 2 and len(errors(err)) == 1, err
    assert "probably mismatched" in errors(err)[0] and "against chance" in errors(err)[0]
    assert not (root / "models/finetuned").exists() and not (root / "reports/train.json").exists()


@pytest.mark.parametrize("names,label_map,outcome", [
    (["science_technology", "world", "sports", "business"], {}, "cannot match the model's class(es) 'science_technology'"),
    (["science_technology", "world", "sports", "business"], {"science_technology": "Sci/Tech"}, "ok"),
    (["World", "Sports", "Business"], {}, "the model has 3 classes and the data 4"),
])
def test_prepare_matches_the_heads_names_or_stops_before_writing(tmp_path, shared, monkeypatch, capsys, names, label_map, outcome):
    folder = labelled_folder(tmp_path / "model", names)
    root = tmp_path / "project"
    root.mkdir()
    given_project(root, shared, folder, ["fp32"], label_map=label_map)
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    if outcome == "ok":
        assert code == 0, err
        meta = json.loads((root / "data/prepared/meta.json").read_text())
        assert meta["classes"] == ["Sci/Tech", "World", "Sports", "Business"] and len(meta["label_mapping"]) == 4
        return
    assert code == 2 and len(errors(err)) == 1 and outcome in errors(err)[0] and "data: 'World'" in err, err
    assert not (root / "data/prepared").exists() and not (root / "reports/data.json").exists()


def test_generic_names_warn_once(tmp_path, shared, monkeypatch, capsys):
    folder = labelled_folder(tmp_path / "model", [f"LABEL_{i}" for i in range(4)])
    root = tmp_path / "project"
    root.mkdir()
    given_project(root, shared, folder, ["fp32"])
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    assert code == 0 and err.count("warning: the model's classes have generic names") == 1, err
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["classes"] == CLASSES and meta["label_mapping"]["LABEL_3"] == "Sci/Tech"


# ------------------------------------------------------------------------------- data for a given model
def test_a_calibration_file_stands_in_for_train_but_never_the_test_rows(tmp_path, shared, monkeypatch, capsys):
    import pandas as pd

    folder = labelled_folder(tmp_path / "model", CLASSES)
    data = tmp_path / "data"
    data.mkdir()
    test = pd.read_csv(AG_NEWS / "test.csv").head(200)
    test.to_csv(data / "test.csv", index=False)
    shutil.copy(AG_NEWS / "classes.txt", data / "classes.txt")
    pd.read_csv(AG_NEWS / "train.csv").head(400).to_csv(data / "calibration.csv", index=False)
    root = tmp_path / "project"
    root.mkdir()
    given_project(root, shared, folder, ["fp32"])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source=str(data), max_train_samples=None, max_test_samples=None)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    assert code == 0, err
    details = json.loads((root / "reports/data.json").read_text())
    assert details["splits"]["validation"]["rows"] == 40 and details["splits"]["test"]["rows"] == 200
    assert details["dropped_test_rows_in_train"] == 0
    shutil.rmtree(root / "data")
    (root / "reports/data.json").unlink()
    test.head(150).to_csv(data / "calibration.csv", index=False)  # the scored rows themselves
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    assert code == 2 and "150 of the 150 train / calibration rows are test rows" in err
    assert not (root / "data/prepared").exists()
    pd.read_csv(AG_NEWS / "train.csv").head(400).to_csv(data / "train.csv", index=False)
    code, err = run_stage("prepare.py", [], root, monkeypatch, capsys)
    assert code == 2 and "both train.csv and calibration.csv; keep one" in err


def test_a_base_model_without_a_trained_head_is_refused(tmp_path, shared):
    """model.init: finetuned takes a trained classifier: weights without the head's (a pretrained encoder) stop."""
    from transformers import AutoModel

    from ptqflow.config import ModelParams
    from ptqflow.errors import PtqflowError
    from ptqflow.modeling import load_given

    folder = labelled_folder(tmp_path / "labelled", CLASSES, "bert")
    body = tmp_path / "body-only"
    AutoModel.from_pretrained(str(folder)).save_pretrained(str(body))
    shutil.copy(folder / "config.json", body / "config.json")
    with pytest.raises(PtqflowError, match="no trained classification head"):
        load_given(ModelParams(init="finetuned", pretrained=str(body)), 0)


def test_label_map_needs_a_model_used_as_given():
    from ptqflow.config import ModelParams
    from ptqflow.errors import PtqflowError

    with pytest.raises(PtqflowError, match="model.label_map must be empty unless model.init is finetuned"):
        ModelParams(init="pretrained", label_map={"a": "b"})
    assert not ModelParams(init="finetuned").trains and ModelParams(init="scratch").trains
    assert ROOT.is_dir()
