"""Typed parameters: each `params.yaml` section is a dataclass, validated once when a stage starts.

`load_section(Cls, "name")` reads `params.yaml`, rejects unknown keys (with a spelling hint), wrong
types and out-of-range values with one `PtqflowError` that names the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import PtqflowError
from .inputs import MAX_ROWS

PARAMS_FILE = "params.yaml"


# --------------------------------------------------------------------------------------------- schema
@dataclass
class DataParams:
    source: str = "data/raw/ag_news"  # local folder (CSV / Parquet / JSONL) or a Hub dataset id
    val_fraction: float = 0.1  # stratified share of train held out for validation
    max_train_samples: int | None = None  # stratified cap on train rows (before the val split)
    max_test_samples: int | None = None  # stratified cap on test rows; None = the whole test split
    max_length: int = 128  # tokens per example after truncation
    seed: int = 42
    text_pair: str | None = None  # a second text column (sentence pairs): the tokenizer's second segment

    def __post_init__(self) -> None:
        check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "a number in (0, 1)", self.val_fraction)
        check(self.max_length >= 8, "data.max_length", "an integer >= 8", self.max_length)
        check(self.text_pair is None or (self.text_pair.strip() != "" and self.text_pair not in ("text", "label")),
               "data.text_pair", "a column name other than text and label, or null", self.text_pair)
        for key in ("max_train_samples", "max_test_samples"):
            v = getattr(self, key)
            check(v is None or v > 0, f"data.{key}", "a positive integer or null", v)


@dataclass
class ModelParams:
    base: str = "models/base/gpt2"  # tokenizer + architecture config folder (written by `ptqflow assets`)
    # scratch: model.base's architecture with fresh weights, trained; pretrained: model.pretrained's weights with a
    # fresh head, fine-tuned; finetuned: model.pretrained is a trained classifier, used as given (not trained)
    init: Literal["scratch", "pretrained", "finetuned"] = "scratch"
    pretrained: str = "gpt2"  # Hub id or local folder with weights, used when init = pretrained or finetuned
    overrides: dict[str, Any] = field(default_factory=dict)  # the architecture's own config fields, init = scratch
    # init = finetuned: the model's class name -> the data's, where they differ ("science_technology": "Sci/Tech");
    # names that are equal (ignoring case and spaces) match by themselves
    label_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.overrides.items():  # the fields themselves are checked against the config (modeling.py)
            check(isinstance(value, (int, float, str, bool)), f"model.overrides.{key}", "a number, string or true/false", value)
        check(not self.label_map or self.init == "finetuned", "model.label_map",
              "empty unless model.init is finetuned (a trained head's names are matched to the data's)", self.label_map)
        check(len(set(self.label_map.values())) == len(self.label_map), "model.label_map",
              "one model class per data class (a value appears twice)", self.label_map)

    @property
    def trains(self) -> bool:
        """Whether the `finetune` stage trains (scratch, pretrained) or takes the model as given (finetuned)."""
        return self.init != "finetuned"


@dataclass
class TrainParams:
    lr: float = 5e-4
    batch_size: int = 32
    epochs: float = 2
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    seed: int = 42
    eval_batch_size: int = 128
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast for the forward/backward passes (weights, optimizer and the saved model stay float32):
    # auto = where the device computes bf16 natively (CUDA with bf16, a CPU with avx512_bf16 / amx_bf16)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    group_by_length: bool = True  # batches of similar length (less padding); the order within is still random
    # keep the input (token) embedding table as pretrained: no gradient or optimizer step for its vocab x width
    # weights (half of a small encoder's parameters); a scratch model needs them trained
    freeze_input_embeddings: bool | Literal["auto"] = "auto"  # auto: frozen for model.init: pretrained, trained for scratch
    freeze_layers: int = 0  # the first N transformer layers keep their pretrained weights too (no backward through them)
    # attention implementation while training: auto = eager on a CPU (its backward under bf16 autocast measured
    # 18% faster than SDPA's there), the model's default (SDPA) on a GPU; evaluation keeps the model's default
    attention: Literal["auto", "sdpa", "eager"] = "auto"

    def __post_init__(self) -> None:
        check(self.lr > 0, "train.lr", "a number > 0", self.lr)
        check(self.batch_size > 0, "train.batch_size", "an integer > 0", self.batch_size)
        check(self.epochs > 0, "train.epochs", "a number > 0", self.epochs)
        check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "a number in [0, 1)", self.warmup_ratio)
        check(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        check(self.eval_batch_size > 0, "train.eval_batch_size", "an integer > 0", self.eval_batch_size)
        check(self.freeze_layers >= 0, "train.freeze_layers", "an integer >= 0", self.freeze_layers)


@dataclass
class EvalParams:
    batch_size: int = 128  # prediction batch over the test split
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "eval.batch_size", "an integer > 0", self.batch_size)


@dataclass
class ProfileParams:
    """One way of calling the model (a traffic profile), timed by the `benchmark` stage (batches.profile_batches)."""

    batch_size: int = 1  # rows per call: 1 = one text at a time (an online service)
    padding: Literal["longest", "fixed"] = "longest"  # longest: each call padded to its longest row (batch 1: none); fixed: to data.max_length
    order: Literal["random", "by_length"] = "random"  # how rows are grouped into calls: as they come (seeded), or length-bucketed
    rows: int = 32  # test rows per visit (a seeded sample, the same in every run)
    passes: int = 1  # timed passes over those rows per visit
    statistic: Literal["latency", "throughput"] = "latency"  # per call (p50 / p95 / p99) or rows per second; speedups pair on it

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "benchmark.profiles.*.batch_size", "an integer > 0", self.batch_size)
        check(self.rows >= self.batch_size, "benchmark.profiles.*.rows", "an integer >= its batch_size", self.rows)
        check(self.passes >= 1, "benchmark.profiles.*.passes", "an integer >= 1", self.passes)


def _default_profiles() -> dict[str, ProfileParams]:
    return {"online": ProfileParams(1, "longest", "random", 24, 1, "latency"),
            "batch": ProfileParams(32, "longest", "by_length", 64, 1, "throughput"),
            "fixed": ProfileParams(16, "fixed", "random", 16, 1, "latency")}


@dataclass
class BenchmarkParams:
    """The interleaved latency protocol (src/ptqflow/benchmark.py) over the traffic profiles."""

    # named ways of calling the model; the first is the one the report's single-speed figures and `fastest` use
    profiles: dict[str, ProfileParams] = field(default_factory=_default_profiles)
    rounds: int = 15  # each round visits every variant once, in a fresh seeded random order
    warmup: int = 1  # untimed calls at the start of each visit (of each profile)
    seed: int = 0  # the visiting orders and the rows each profile draws
    threads: int | None = None  # CPU threads, fixed for the whole stage; None = torch's default (recorded)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        check(len(self.profiles) > 0, "benchmark.profiles", "a mapping of at least one named profile", self.profiles)
        check(all(str(n).replace("_", "").replace("-", "").isalnum() for n in self.profiles), "benchmark.profiles",
              "named with letters, digits, _ and - only", list(self.profiles))
        check(self.rounds >= 3, "benchmark.rounds", "an integer >= 3 (the speedup interval is over rounds)", self.rounds)
        check(self.warmup >= 0, "benchmark.warmup", "an integer >= 0", self.warmup)
        check(self.threads is None or self.threads > 0, "benchmark.threads", "a positive integer or null", self.threads)

    @property
    def primary(self) -> str:
        return next(iter(self.profiles))


@dataclass
class ReportParams:
    size_unit: Literal["MiB", "MB"] = "MiB"
    baseline: str = "fp32"  # compression, speedup and the statistics are against this variant
    half_baseline: str = "auto"  # a second speedup column: this variant, or auto = the faster half-precision cast here
    alpha: float = 0.05  # McNemar significance level
    # the verdicts hold jointly across the variants of a run: holm (family-wise error), bh (Benjamini-Hochberg,
    # false discovery rate) or none; speed verdicts use the simultaneous (Bonferroni) interval unless none
    multiple_comparisons: Literal["holm", "bh", "none"] = "holm"
    bootstrap_resamples: int = 2000
    seed: int = 0
    max_accuracy_drop: float = 0.005  # recommendation: accept a significant drop up to this (fraction; 0.005 = 0.5 points)
    speed_equivalence: float = 0.05  # speed differences below this fraction count as none, even when the interval excludes 1

    def __post_init__(self) -> None:
        check(0 < self.alpha < 1, "report.alpha", "a number in (0, 1)", self.alpha)
        check(0 <= self.max_accuracy_drop < 1, "report.max_accuracy_drop", "a fraction in [0, 1) (0.005 = 0.5 points)",
               self.max_accuracy_drop)
        check(0 <= self.speed_equivalence < 1, "report.speed_equivalence", "a fraction in [0, 1) (0.05 = 5%)",
               self.speed_equivalence)
        check(self.bootstrap_resamples >= 1000, "report.bootstrap_resamples", "an integer >= 1000", self.bootstrap_resamples)


@dataclass
class PackageParams:
    variant: str = "fastest"  # smallest | fastest (the report's acceptable picks) | fastest:<profile> | a variant name
    registered_model: str | None = "ptqflow-classifier"  # MLflow Model Registry name; null: package without registering
    max_rows: int = MAX_ROWS  # the served model's limit of rows per request (one request is answered at a time)

    def __post_init__(self) -> None:
        check(bool(str(self.variant).strip()), "package.variant", "smallest, fastest or a variant name", self.variant)
        check(self.registered_model is None or bool(self.registered_model.strip()), "package.registered_model",
               "a model name or null", self.registered_model)
        check(self.max_rows >= 1, "package.max_rows", "an integer >= 1", self.max_rows)


# ------------------------------------------------------------------------------------------ machinery
def check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise PtqflowError(f"{PARAMS_FILE}: {key} must be {expected}, got {got!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except PtqflowError:
                continue
        raise PtqflowError(f"{PARAMS_FILE}: {key} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            (etp,) = typing.get_args(tp)
            return [_coerce(v, etp, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, vtp = typing.get_args(tp)
            return {k: _coerce(v, vtp, f"{key}.{k}") for k, v in value.items()}
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise PtqflowError(f"{PARAMS_FILE}: {key} must be {_type_name(tp)}, got {value!r}")


def build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from the mapping `raw` (the params section at `where`), or raise PtqflowError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PtqflowError(f"{PARAMS_FILE}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(names)})"
            raise PtqflowError(f"{PARAMS_FILE}: unknown key {where}.{key}{extra}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PtqflowError(f"parameter file {path} not found (run from the project root)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PtqflowError(f"{path}: not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise PtqflowError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_section(cls: type, name: str, params: dict) -> Any:
    """Validate section `name` of the loaded params as dataclass `cls`."""
    return build(cls, params.get(name), name)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
