"""`ptqflow predict`: labels for texts from a packaged model (`models/recommended`, written by the package stage).

The model is loaded by ptqflow's registry from the packaged artifact, as evaluation loads it (package.json's
`loader` says what else can load it). Texts are tokenized as in training (truncated to
`max_length`) and predicted in padded batches, longest first, as evaluation batches them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from .errors import PtqflowError
from .io import read_json


class Packaged:
    """A packaged classifier: `predict(texts) -> labels`."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        folder = Path(folder)
        if not (folder / "package.json").is_file():
            raise PtqflowError(f"{folder}: no packaged model (run: dvc repro package)")
        self.meta = read_json(folder / "package.json")
        self.device = torch.device(device)
        self.model = _load(folder / "model", self.meta, self.device)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        self.labels = list(self.meta["labels"])
        self.pad_id = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else 0
        import threading

        self._lock = threading.Lock()  # one prediction at a time: a server calls from several threads

    @torch.inference_mode()
    def predict(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> list[str]:
        """Labels for `texts`, one call at a time (the lock: an OpenVINO infer request, an ONNX Runtime session's
        buffers and a fast tokenizer's truncation settings are not safe to use from two threads at once)."""
        from tqdm.auto import tqdm

        from .batches import longest_first, pad_batch

        with self._lock:
            ids = self.tokenizer(list(texts), truncation=True, max_length=self.meta["max_length"])["input_ids"]
            out: list[str] = [""] * len(ids)
            for rows in tqdm(longest_first([len(r) for r in ids], batch_size), desc="predict", unit="batch",
                             disable=not progress):
                batch = pad_batch([ids[i] for i in rows], self.pad_id)
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
                for i, k in zip(rows, logits.argmax(-1).cpu().numpy()):
                    out[i] = self.labels[k]
            return out


def _load(model_dir: Path, meta: dict, device: torch.device) -> torch.nn.Module:
    """The packaged artifact through the registry (the same loader as evaluation; `loader` tells other tools)."""
    from .quantize import load_variant

    return load_variant(meta["variant"], {"scheme": meta["scheme"], **meta["options"]}, model_dir, device)[0]


def load_packaged(folder: str | Path, device: str = "cpu") -> Packaged:
    return Packaged(folder, device)


def predict_csv(model: Packaged, src: Path, dst: Path, column: str = "text") -> int:
    """Read `src` (a CSV with a `column` column), write `dst` with a `label` column added; returns the row count.
    An empty file or a missing column is one line, and nothing is written."""
    from .io import write_text

    if not src.is_file():
        raise PtqflowError(f"{src}: no such file")
    with src.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    if not fields:
        raise PtqflowError(f"{src}: empty CSV (expected a header with a {column!r} column)")
    if column not in fields:
        raise PtqflowError(f"{src}: no {column!r} column (columns: {', '.join(fields)})")
    if not rows:
        raise PtqflowError(f"{src}: no rows to predict")
    labels = model.predict([r[column] or "" for r in rows], progress=True)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*fields, "label"])
    writer.writeheader()
    for row, label in zip(rows, labels):
        writer.writerow({**row, "label": label})
    write_text(dst, buf.getvalue())
    return len(rows)
