"""Reading sources (all accepted formats), label mapping, cleaning and splitting."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ptqflow.config import DataParams
from ptqflow.data import load_prepared, load_source, prepare, split_frames
from ptqflow.errors import PtqflowError

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


def frame(n_per_class: int = 10, offset: int = 0) -> pd.DataFrame:
    rows = [{"text": f"article {offset + i} about {c}", "label": k} for k, c in enumerate(CLASSES) for i in range(n_per_class)]
    return pd.DataFrame(rows)


def write(folder, fmt: str, df: pd.DataFrame, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_each_format_reads_the_same(tmp_path, fmt):
    write(tmp_path, fmt, frame(10), "train")
    write(tmp_path, fmt, frame(3, 100), "test")
    frames, classes, digest = load_source(str(tmp_path))
    assert classes == ["0", "1", "2", "3"]
    assert len(frames["train"]) == 40 and len(frames["test"]) == 12
    assert frames["train"]["label"].tolist() == frame(10)["label"].tolist()
    assert digest.startswith("sha256:")


def test_class_names_from_classes_txt_and_string_labels(tmp_path):
    train, test = frame(5), frame(2, 50)
    train["label"] = [CLASSES[k] for k in train["label"]]
    write(tmp_path, "csv", train, "train")
    write(tmp_path, "csv", test, "test")  # int ids in test, names in train: both map through classes.txt
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    frames, classes, _ = load_source(str(tmp_path))
    assert classes == CLASSES
    assert frames["train"]["label"].tolist() == frame(5)["label"].tolist()
    assert frames["test"]["label"].tolist() == frame(2)["label"].tolist()


def test_string_labels_without_classes_txt_are_sorted(tmp_path):
    df = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["sports", "world", "sports", "world"]})
    write(tmp_path, "csv", df, "train")
    write(tmp_path, "csv", df, "test")
    frames, classes, _ = load_source(str(tmp_path))
    assert classes == ["sports", "world"] and frames["train"]["label"].tolist() == [0, 1, 0, 1]


def test_original_three_column_ag_news_csv(tmp_path):
    (tmp_path / "train.csv").write_text('"3","Wall St. Bears","Short-sellers are back."\n"1","Talks","Leaders met."\n')
    (tmp_path / "test.csv").write_text('"2","Win","Team wins."\n"4","Chip","New chip."\n"1","War","Troops."\n"3","Oil","Prices."\n')
    frames, classes, _ = load_source(str(tmp_path))
    assert frames["train"]["text"].tolist() == ["Wall St. Bears Short-sellers are back.", "Talks Leaders met."]
    assert frames["train"]["label"].tolist() == [2, 0]
    assert frames["test"]["label"].tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "empty file"),
        ("text,label\n", "no data rows"),
        ("body,label\nhello,1\n", "no 'text' column"),
        ("text,label\nhello,7\n", "outside 0..3"),
    ],
)
def test_bad_files_get_one_clear_error(tmp_path, content, message):
    (tmp_path / "train.csv").write_text(content)
    (tmp_path / "test.csv").write_text("text,label\nx,0\n")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    with pytest.raises(PtqflowError, match=message) as err:
        load_source(str(tmp_path))
    assert "train.csv" in str(err.value)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PtqflowError, match="no such folder"):
        load_source(str(tmp_path / "nope"))


def test_split_is_stratified_seeded_and_capped():
    frames = {"train": frame(50), "test": frame(20, 1000)}
    params = DataParams(val_fraction=0.2, max_train_samples=120, max_test_samples=40, seed=3)
    a, _ = split_frames(frames, params)
    b, _ = split_frames(frames, params)
    assert len(a["train"]) == 96 and len(a["validation"]) == 24 and len(a["test"]) == 40
    assert a["validation"]["label"].value_counts().tolist() == [6, 6, 6, 6]
    assert a["test"]["label"].value_counts().tolist() == [10, 10, 10, 10]
    assert a["train"].equals(b["train"]) and a["validation"].equals(b["validation"])
    assert not set(a["train"]["text"]) & set(a["validation"]["text"])


def test_blank_texts_dropped_and_counted_duplicates_counted():
    train = pd.concat([frame(10), pd.DataFrame({"text": ["", None, "  "], "label": [0, 1, 2]}), frame(1)], ignore_index=True)
    splits, counts = split_frames({"train": train, "test": frame(2, 1000)}, DataParams())
    assert counts["dropped_empty_text"]["train"] == 3
    assert counts["duplicate_rows"]["train"] == 4
    assert len(splits["train"]) + len(splits["validation"]) == 44


def test_train_rows_that_are_test_rows_are_dropped_and_counted_or_refused():
    """The scored rows never validate or calibrate: a few shared rows are dropped (and counted); a train file that
    is mostly the test file is refused."""
    splits, counts = split_frames({"train": frame(10), "test": frame(2)}, DataParams())
    assert counts["dropped_test_rows_in_train"] == 8
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])
    assert not set(splits["validation"]["text"]) & set(splits["test"]["text"])
    with pytest.raises(PtqflowError, match="20 of the 40 train / calibration rows are test rows"):
        split_frames({"train": frame(10), "test": frame(5)}, DataParams())


def test_class_only_in_test_is_refused():
    train = frame(5)
    train = train[train["label"] != 3]
    with pytest.raises(PtqflowError, match=r"class id\(s\) \[3\] appear in test but not in train"):
        split_frames({"train": train, "test": frame(2)}, DataParams())


def test_prepare_writes_tokenized_splits_and_metrics(tmp_path, tokenizer):
    src = tmp_path / "src"
    write(src, "csv", frame(20), "train")
    write(src, "csv", frame(5, 500), "test")
    (src / "classes.txt").write_text("\n".join(CLASSES))
    metrics = prepare(DataParams(source=str(src), max_length=8), tokenizer, tmp_path / "out")
    data, meta = load_prepared(tmp_path / "out")
    assert meta["classes"] == CLASSES and meta["max_length"] == 8
    assert {"train", "validation", "test"} == set(data)
    assert max(len(x) for x in data["test"]["input_ids"]) <= 8
    assert metrics["splits"]["test"]["per_class"] == {c: 5 for c in CLASSES}
    assert metrics["splits"]["train"]["rows"] + metrics["splits"]["validation"]["rows"] == 80
    json.dumps(metrics)


def test_a_tokenized_split_is_fingerprinted_by_its_rows_tokenizer_and_length(tokenizer):
    """The fingerprint that data/prepared's state.json records (DVC hashes it) is the same for the same inputs
    and another for other rows, another max_length or another tokenizer."""
    from ptqflow.data import tokenize
    from ptqflow.modeling import load_tokenizer

    from .conftest import SHARED

    rows = {"test": frame(3, 500)}

    def fingerprint(splits, tok=tokenizer, length=8):
        return tokenize(splits, tok, length)["test"]._fingerprint

    same = fingerprint(rows)
    assert same == fingerprint({"test": frame(3, 500)})
    other_tokenizer = load_tokenizer(SHARED / "models" / "all-MiniLM-L6-v2")
    assert len({same, fingerprint({"test": frame(3, 600)}), fingerprint(rows, length=9), fingerprint(rows, other_tokenizer)}) == 4
