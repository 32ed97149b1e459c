"""Evaluate one variant: predict the test split from its saved artifact, score it, size it.

Speed is not measured here: every variant is timed side by side in one process by the `benchmark` stage.

Scores come from scikit-learn: accuracy, macro precision / recall / F1, and per class precision, recall,
F1, support and one-vs-rest accuracy, (N - FP_k - FN_k) / N, as in the report's Tables 2-5.
"""

from __future__ import annotations

import time
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import longest_first, pad_batch
from .config import EvalParams
from .machine import environment
from .modeling import pick_device
from .quantize import VariantSkipped, load_variant
from .quantize.registry import run_options
from .quantize.common import WEIGHT_FILES_NOTE, weights_bytes
from .sizes import memory_footprint, model_device, size_record
from .structure import uses_token_types

if TYPE_CHECKING:  # pandas, scikit-learn and datasets are imported when used: a skipped variant needs none of them
    import pandas as pd


@torch.inference_mode()
def predict(
    model: torch.nn.Module, input_ids: list[list[int]], batch_size: int, pad_id: int, desc: str = "predict",
    lengths: list[int] | None = None, token_types: list[list[int]] | None = None,
) -> np.ndarray:
    """Arg-max class of each example, in the given order. The rows run longest first (batches.longest_first),
    each batch padded to its own longest row; with `lengths` (compiled variants: a few shapes to compile, never a
    recompilation per length) every batch is padded to the smallest of them that holds it, and to `batch_size`
    rows (batches.bucketed)."""
    from .batches import bucketed

    device = model_device(model)
    input_ids = list(input_ids)  # a datasets Column reads Arrow on every index
    token_types = list(token_types) if token_types is not None else None
    preds = np.zeros(len(input_ids), dtype=np.int64)
    for rows in tqdm(longest_first([len(r) for r in input_ids], batch_size), desc=desc, unit="batch"):
        ids = [input_ids[i] for i in rows]
        types = [token_types[i] for i in rows] if token_types is not None else None
        length = None
        if lengths:
            ids, length = bucketed(ids, lengths, batch_size)
            types = bucketed(types, lengths, batch_size)[0] if types is not None else None
        batch = pad_batch(ids, pad_id, length, types)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        preds[rows] = logits[: len(rows)].argmax(-1).cpu().numpy()
    return preds


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro P/R/F1, per-class P/R/F1/support/one-vs-rest accuracy, and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    pc, rc, fc, sc = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    n = int(cm.sum())
    per_class = {}
    for k, name in enumerate(classes):
        fp, fn = int(cm[:, k].sum() - cm[k, k]), int(cm[k, :].sum() - cm[k, k])
        per_class[name] = {
            "accuracy": (n - fp - fn) / n if n else 0.0,
            "precision": float(pc[k]),
            "recall": float(rc[k]),
            "f1": float(fc[k]),
            "support": int(sc[k]),
        }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f),
        "per_class": per_class,
        "confusion_matrix": {"labels": classes, "matrix": cm.tolist()},
    }


def evaluate_variant(
    variant: str, raw_variant: dict, artifact_dir: str | Path, prepared_dir: str | Path, params: EvalParams
) -> tuple[dict, pd.DataFrame]:
    """Details JSON and a predictions frame (actual, predicted class names) for one variant."""
    import pandas as pd

    device = pick_device(params.device)
    try:
        model, qmeta = load_variant(variant, raw_variant, artifact_dir, device)
    except VariantSkipped as exc:
        return skipped_metrics(variant, raw_variant, str(exc), device), pd.DataFrame({"actual": [], "predicted": []})
    from .data import load_prepared

    data, meta = load_prepared(prepared_dir)
    classes, test = meta["classes"], data["test"]
    pad_id = model.config.pad_token_id
    compiled = run_options(variant, raw_variant).compile

    start = time.perf_counter()
    # compiled variants get a few fixed shapes (batches.buckets): each compiled (and CUDA-graphed) once, never a
    # recompilation per batch length (dynamo's recompile limit would then run the rest eagerly)
    from .batches import buckets

    lengths = buckets(meta["max_length"]) if compiled != "none" else None
    types = test["token_type_ids"] if "token_type_ids" in test.column_names and uses_token_types(model.config) else None
    y_pred = predict(model, test["input_ids"], params.batch_size, pad_id, desc=f"evaluate@{variant}", lengths=lengths,
                     token_types=types)
    predict_s = time.perf_counter() - start
    y_true = np.asarray(test["labels"])

    metrics = {
        "variant": variant,
        "scheme": qmeta["scheme"],
        "options": qmeta["options"],
        "compile": compiled,
        "runtime_dtype": qmeta.get("runtime_dtype"),
        "runtime": getattr(model, "ptqflow_runtime", {}),
        "quantization": {k: v for k, v in qmeta.items() if k not in ("variant", "scheme", "options", "runtime_dtype")},
        **classification_metrics(y_true, y_pred, classes),
        "test_rows": int(len(y_true)),
        "size_on_disk": {**size_record(weights_bytes(Path(artifact_dir))), "what": WEIGHT_FILES_NOTE},
        "memory_footprint": {**size_record(memory_footprint(model)), "what": "parameters + buffers in memory"},
        "predict_wall_s": round(predict_s, 3),
        "environment": environment(device),
    }
    predictions = pd.DataFrame({"actual": [classes[i] for i in y_true], "predicted": [classes[i] for i in y_pred]})
    return metrics, predictions


def skipped_metrics(variant: str, raw_variant: dict, reason: str, device: torch.device) -> dict:
    """What a variant that cannot run here reports instead of scores: that it was skipped, and why."""
    return {"variant": variant, "scheme": raw_variant.get("scheme"), "skipped": reason, "environment": environment(device)}
