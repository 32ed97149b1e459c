"""Read a labelled text dataset, split it, tokenize it, write the prepared splits.

Accepted sources (`data.source` in params.yaml):
- a local folder with `train.<ext>` and `test.<ext>`, ext one of csv, parquet, jsonl/json, with columns
  `text` and `label` (label an int id or a class-name string; class names from `classes.txt` when present).
  For a model used as given (`model.init: finetuned`, nothing is trained) a `calibration.<ext>` file can stand
  in for `train`: the validation split and the calibrating variants' rows come from it, never from `test`;
- the original 3-column AG News CSV (no header: class 1-4, title, description), text = title + " " + description;
- a Hugging Face Hub dataset id (for example `fancyzhx/ag_news`), loaded with `datasets.load_dataset`.

Rows whose text is missing or blank are dropped and counted; duplicate rows are kept and counted. Rows of the
train (or calibration) file that also appear in the test file are dropped and counted: the scored rows never
validate or calibrate. When half or more of them are test rows, the file is refused (it is the test set).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict

from .config import DataParams
from .errors import PtqflowError, warn

SPLITS = ("train", "test")
EXTENSIONS = (".csv", ".parquet", ".jsonl", ".json")
STAND_INS = {"train": "calibration"}  # a split file that can take a missing split's place (a model used as given)


# ------------------------------------------------------------------------------------------- reading
def find_split_file(folder: Path, split: str) -> Path:
    """The file of `split` (train.csv, ...), or of its stand-in (calibration.csv for train) when it has none."""
    found = [folder / f"{split}{ext}" for ext in EXTENSIONS if (folder / f"{split}{ext}").is_file()]
    stand_in = STAND_INS.get(split)
    if stand_in:
        other = [folder / f"{stand_in}{ext}" for ext in EXTENSIONS if (folder / f"{stand_in}{ext}").is_file()]
        if found and other:
            raise PtqflowError(f"{folder}: both {found[0].name} and {other[0].name}; keep one (the validation and "
                               f"calibration rows come from it)")
        found = found or other
    if not found:
        names = [split + e for e in EXTENSIONS] + ([stand_in + e for e in EXTENSIONS] if stand_in else [])
        raise PtqflowError(f"{folder}: no {split}{' (or ' + stand_in + ')' if stand_in else ''} file ({', '.join(names)})")
    if len(found) > 1:
        raise PtqflowError(f"{folder}: several {split} files ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def read_table(path: Path, text_pair: str | None = None) -> pd.DataFrame:
    """One split file as a frame with columns text, [text_pair,] label (label still raw: int or string)."""
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=path.suffix == ".jsonl" or _looks_like_jsonl(path))
        else:
            df = _read_csv(path)
    except PtqflowError:
        raise
    except UnicodeDecodeError as exc:
        raise PtqflowError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise PtqflowError(f"{path}: cannot be parsed: {str(exc).splitlines()[0]}") from None
    if df.empty:
        raise PtqflowError(f"{path}: no data rows")
    wanted = ["text", *([text_pair] if text_pair else []), "label"]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        what = " (data.text_pair)" if text_pair in missing else ""
        raise PtqflowError(f"{path}: no {' or '.join(repr(c) for c in missing)} column{what} (columns: {', '.join(map(str, df.columns))})")
    return df[wanted]


def _looks_like_jsonl(path: Path) -> bool:
    with open(path, encoding="utf-8") as fh:
        return fh.read(1) != "["


def _read_csv(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise PtqflowError(f"{path}: empty file")
    head = pd.read_csv(path, nrows=1, header=None, dtype=str, encoding="utf-8")
    first = [str(v).strip().lower() for v in head.iloc[0].tolist()]
    if "text" in first or "label" in first:
        return pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""], dtype={"text": str})
    if len(first) == 3 and first[0].isdigit():  # the original AG News layout: class 1-4, title, description
        raw = pd.read_csv(path, header=None, names=["cls", "title", "description"], encoding="utf-8", keep_default_na=False)
        text = raw["title"].astype(str).str.strip() + " " + raw["description"].astype(str).str.strip()
        return pd.DataFrame({"text": text.str.strip(), "label": raw["cls"].astype(int) - 1})
    raise PtqflowError(f"{path}: expected a header with 'text' and 'label', or the 3-column AG News layout (class, title, description)")


def read_classes(folder: Path) -> list[str] | None:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) < 2:
        raise PtqflowError(f"{path}: needs at least two class names, one per line")
    return names


def encode_labels(df: pd.DataFrame, classes: list[str] | None, where: str) -> tuple[pd.Series, list[str]]:
    """Map raw labels to int ids 0..K-1; returns the ids and the class names."""
    raw = df["label"]
    if pd.api.types.is_integer_dtype(raw) or pd.api.types.is_float_dtype(raw) and raw.dropna().mod(1).eq(0).all():
        if raw.isna().any():
            raise PtqflowError(f"{where}: missing label in row {int(raw.isna().to_numpy().argmax()) + 2}")
        ids = raw.astype(int)
        names = classes or [str(i) for i in range(int(ids.max()) + 1)]
        bad = ids[(ids < 0) | (ids >= len(names))]
        if len(bad):
            raise PtqflowError(f"{where}: label {bad.iloc[0]} in row {bad.index[0] + 2} is outside 0..{len(names) - 1}")
        return ids, names
    strings = raw.astype(str).str.strip()
    names = classes or sorted(strings.unique())
    index = {n: i for i, n in enumerate(names)}
    unknown = strings[~strings.isin(index)]
    if len(unknown):
        raise PtqflowError(f"{where}: label {unknown.iloc[0]!r} in row {unknown.index[0] + 2} is not a known class ({', '.join(names)})")
    return strings.map(index).astype(int), names


def load_source(source: str, text_pair: str | None = None) -> tuple[dict[str, pd.DataFrame], list[str], str]:
    """Train and test frames (text, [text_pair,] label as int id), class names, and a content hash of the inputs."""
    folder = Path(source)
    if folder.is_dir():
        classes = read_classes(folder)
        frames, digest = {}, hashlib.sha256()
        for split in SPLITS:
            path = find_split_file(folder, split)
            digest.update(path.read_bytes())
            frames[split] = read_table(path, text_pair)
        if classes is None:  # one shared mapping for string labels: the sorted union of both splits
            if not all(pd.api.types.is_numeric_dtype(f["label"]) for f in frames.values()):
                classes = sorted(set().union(*(set(f["label"].astype(str).str.strip()) for f in frames.values())))
            else:
                top = max(int(f["label"].max()) for f in frames.values())
                classes = [str(i) for i in range(top + 1)]
        for split in SPLITS:
            frames[split]["label"], _ = encode_labels(frames[split], classes, str(find_split_file(folder, split)))
        return frames, classes, "sha256:" + digest.hexdigest()
    if "/" in source and not source.startswith((".", "/")) and source.count("/") == 1:
        return _load_hub(source, text_pair)
    raise PtqflowError(f"data.source {source!r}: no such folder (run `ptqflow assets`, or give a Hub dataset id like fancyzhx/ag_news)")


def _load_hub(name: str, text_pair: str | None = None) -> tuple[dict[str, pd.DataFrame], list[str], str]:
    from datasets import load_dataset

    from .assets import require_hub

    require_hub(f"data.source {name!r}", "point data.source at a local folder (`ptqflow assets` copies AG News to data/raw/ag_news)")
    try:
        ds = load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - the Hub raises many types when unreachable
        raise PtqflowError(
            f"cannot load dataset {name!r} from the Hugging Face Hub ({type(exc).__name__}); offline, point "
            f"data.source at a local folder (`ptqflow assets` copies AG News to data/raw/ag_news)"
        ) from None
    wanted = ["text", *([text_pair] if text_pair else []), "label"]
    for split in SPLITS:
        missing = [c for c in wanted if c not in ds[split].column_names]
        if missing:
            raise PtqflowError(f"dataset {name!r} {split}: no {' or '.join(repr(c) for c in missing)} column "
                               f"(columns: {', '.join(ds[split].column_names)})")
    classes = list(ds["train"].features["label"].names)
    frames = {s: ds[s].to_pandas()[wanted] for s in SPLITS}
    return frames, classes, "hub:" + name + ":" + ds["train"]._fingerprint + ds["test"]._fingerprint


# --------------------------------------------------------------------------------------- preparation
def clean(df: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Drop rows with missing or blank text (or second segment); returns the frame, rows dropped, duplicate rows (kept)."""
    texts = [c for c in df.columns if c != "label"]
    keep = pd.Series(True, index=df.index)
    for col in texts:
        keep &= df[col].notna() & df[col].astype(str).str.strip().ne("")
    out = df[keep].reset_index(drop=True)
    for col in texts:
        out[col] = out[col].astype(str)
    return out, int((~keep).sum()), int(out.duplicated().sum())


def stratified_take(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded, label-stratified subset of n rows (all rows when n is None or >= len)."""
    if n is None or n >= len(df):
        return df
    from sklearn.model_selection import train_test_split  # only the prepare stage splits: others skip its import

    kept, _ = train_test_split(df, train_size=n, stratify=_stratify(df), random_state=seed)
    return kept.sort_index().reset_index(drop=True)


def _stratify(df: pd.DataFrame) -> pd.Series | None:
    counts = df["label"].value_counts()
    return df["label"] if counts.min() >= 2 else None


def without_test_rows(train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The train (or calibration) rows whose texts are not test rows' texts, and how many were dropped. Refused
    when half or more of them are test rows: the scored rows would validate and calibrate the variants."""
    texts = [c for c in train.columns if c != "label"]
    key = lambda df: df[texts].astype(str).agg("\x1f".join, axis=1)  # noqa: E731 - one string per row
    seen = key(train).isin(set(key(test)))
    overlap = int(seen.sum())
    if overlap and overlap * 2 >= len(train):
        raise PtqflowError(f"{overlap} of the {len(train)} train / calibration rows are test rows: the scored rows cannot "
                           "also validate or calibrate; give rows the test split does not hold")
    return train[~seen].reset_index(drop=True), overlap


def split_frames(frames: dict[str, pd.DataFrame], params: DataParams) -> tuple[dict[str, pd.DataFrame], dict]:
    """Clean, cap and split: returns {train, validation, test} and counts for reports/data.json."""
    counts: dict = {"dropped_empty_text": {}, "duplicate_rows": {}}
    cleaned = {}
    for split, df in frames.items():
        cleaned[split], dropped, dups = clean(df)
        counts["dropped_empty_text"][split] = dropped
        counts["duplicate_rows"][split] = dups
        if cleaned[split].empty:
            raise PtqflowError(f"{split} split has no rows with text")
    cleaned["train"], counts["dropped_test_rows_in_train"] = without_test_rows(cleaned["train"], cleaned["test"])
    missing = sorted(set(cleaned["test"]["label"]) - set(cleaned["train"]["label"]))
    if missing:
        raise PtqflowError(f"class id(s) {missing} appear in test but not in train: the model could never predict them")
    train = stratified_take(cleaned["train"], params.max_train_samples, params.seed)
    test = stratified_take(cleaned["test"], params.max_test_samples, params.seed)
    n_val = max(int(round(len(train) * params.val_fraction)), train["label"].nunique())
    if n_val >= len(train):
        raise PtqflowError(f"data.val_fraction {params.val_fraction} leaves no training rows out of {len(train)}")
    from sklearn.model_selection import train_test_split

    tr, val = train_test_split(train, test_size=n_val, stratify=_stratify(train), random_state=params.seed)
    return {"train": tr.reset_index(drop=True), "validation": val.reset_index(drop=True), "test": test}, counts


def tokenize(splits: dict[str, pd.DataFrame], tokenizer, max_length: int, text_pair: str | None = None) -> DatasetDict:
    """Tokenize (truncate to max_length, no padding: the collator pads each batch). With `text_pair`, that
    column is the tokenizer's second segment (truncated longest-first) and its token_type_ids are kept."""

    def encode(batch):
        if text_pair:
            enc = tokenizer(batch["text"], batch[text_pair], truncation=True, max_length=max_length, return_token_type_ids=True)
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "token_type_ids": enc["token_type_ids"]}
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    columns = ["text", *([text_pair] if text_pair else []), "label"]
    out = DatasetDict()
    for name, df in splits.items():
        ds = Dataset.from_pandas(df[columns].rename(columns={"label": "labels"}), preserve_index=False)
        fingerprint = _tokenized_fingerprint(ds._fingerprint, tokenizer, max_length, text_pair)
        out[name] = ds.map(encode, batched=True, desc=f"tokenize {name}", new_fingerprint=fingerprint)
    return out


def _tokenized_fingerprint(rows: str, tokenizer, max_length: int, text_pair: str | None) -> str:
    """The tokenized split's fingerprint from what determines it: the rows' own fingerprint, the tokenizer's
    definition (its serialized vocabulary and rules where it has one, its settings but not the folder it was read
    from), max_length and text_pair. Given here because `datasets` would otherwise hash `encode` with dill,
    tokenizer and all: 2 s a split for a 50k vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else repr(tokenizer)
    init = {k: v for k, v in tokenizer.init_kwargs.items() if not k.endswith(("_file", "name_or_path"))}  # where, not what
    settings = json.dumps({"class": type(tokenizer).__name__, "init": init, "max_length": max_length,
                           "text_pair": text_pair, "side": tokenizer.truncation_side}, sort_keys=True, default=str)
    return hashlib.sha256("\n".join((rows, definition, settings)).encode()).hexdigest()[:16]


def class_counts(splits: dict[str, pd.DataFrame], classes: list[str]) -> dict:
    return {
        name: {"rows": len(df), "per_class": {classes[k]: int(v) for k, v in sorted(Counter(df["label"]).items())}}
        for name, df in splits.items()
    }


# ------------------------------------------------------------------------------------ the stage's job
def prepare(params: DataParams, tokenizer, out_dir: str | Path, model_classes: list[str] | None = None,
            label_map: dict[str, str] | None = None) -> dict:
    """Read `params.source`, split and tokenize it into `out_dir` (atomically); returns the details for reports/data.json.

    With `model_classes` (a trained head's class names, in output order: a model used as given) the data's classes
    are matched to them by name (labels.py) and the labels re-encoded in the model's output order; the split itself
    does not depend on it (it is drawn first)."""
    from .io import atomic_dir, write_json

    frames, classes, content_hash = load_source(params.source, params.text_pair)
    splits, counts = split_frames(frames, params)
    data_classes, mapping = classes, None
    if model_classes is not None:
        from . import labels

        order, notes = labels.match(model_classes, classes, label_map)
        for note in notes:
            warn(note)
        classes, mapping = labels.in_model_order(order, classes), labels.describe(order, model_classes, classes)
        splits = {name: df.assign(label=labels.relabel(df["label"], order)) for name, df in splits.items()}
    encoded = tokenize(splits, tokenizer, params.max_length, params.text_pair)
    truncated = {n: int(sum(len(x) >= params.max_length for x in ds["input_ids"])) for n, ds in encoded.items()}
    meta = {"classes": classes, "max_length": params.max_length, "source": params.source, "content_hash": content_hash,
            "text_pair": params.text_pair, "pad_token_id": tokenizer.pad_token_id,
            **({"data_classes": data_classes, "label_mapping": mapping} if mapping else {})}
    with atomic_dir(out_dir) as tmp:
        encoded.save_to_disk(str(tmp))
        write_json(tmp / "meta.json", meta)
    return {
        "source": params.source,
        "text_pair": params.text_pair,
        "content_hash": content_hash,
        "classes": classes,
        **({"data_classes": data_classes, "label_mapping": mapping} if mapping else {}),
        "splits": class_counts(splits, classes),
        "truncated_to_max_length": truncated,
        **counts,
    }


def headline(details: dict) -> dict:
    """The rows per split: what `dvc metrics show` keeps of metrics/data.json (the rest goes to reports/data.json)."""
    return {f"{name}_rows": split["rows"] for name, split in details["splits"].items()}


def load_prepared(path: str | Path) -> tuple[DatasetDict, dict]:
    """The prepared splits and their meta (classes, max_length, source)."""
    from datasets import load_from_disk

    from .io import read_json

    path = Path(path)
    if not (path / "meta.json").is_file():
        raise PtqflowError(f"{path}: no prepared data (run the prepare stage: dvc repro prepare)")
    return load_from_disk(str(path)), read_json(path / "meta.json")


def lineage(prepared_dir: str | Path, splits: tuple[str, ...]) -> list[dict]:
    """What MLflow's dataset lineage records for `splits` of the prepared data: its source, content hash, and per
    split the row count and classes (tracking.log_dataset arguments)."""
    data, meta = load_prepared(prepared_dir)
    return [{"name": f"{meta['source']} [{split}]", "source": meta["source"], "digest": meta["content_hash"], "context": split,
             "tags": {"rows": len(data[split]), "classes": ",".join(meta["classes"]), "max_length": meta["max_length"]}}
            for split in splits if split in data]
