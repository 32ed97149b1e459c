"""Rows a calibrating scheme (ort_int8_static, int8_static, fp8) fits its activation ranges on.

In the pipeline they are the validation split of data/prepared, never the test split the variants are
scored on; `ptqflow bench --from-config` has no data and uses seeded random ids. `source` says which, and
the artifact's metadata records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import PtqflowError

SPLIT = "validation"


@dataclass(frozen=True)
class Calibration:
    rows: list[list[int]]
    pad_id: int
    length: int  # every batch padded to it, as the benchmark pads
    source: str
    token_types: list[list[int]] | None = None
    labels: list[int] | None = None  # the rows' classes (validation split): what a search for an accuracy budget scores on

    def batches(self, n_rows: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """The first `n_rows` rows (all of them when there are fewer) in padded batches of `batch_size`."""
        from .batches import pad_batch

        rows = self.rows[:n_rows]
        if not rows:
            raise PtqflowError(f"calibration: no rows in {self.source}")
        types = self.token_types[:n_rows] if self.token_types is not None else None
        return [pad_batch(rows[i : i + batch_size], self.pad_id, self.length,
                          types[i : i + batch_size] if types is not None else None) for i in range(0, len(rows), batch_size)]


    def scoring_batches(self, n_rows: int, batch_size: int = 64) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """The first `n_rows` rows longest first, each batch padded to its own longest row (as evaluation runs
        them), and their labels in that order: what a search scores accuracy on."""
        from .batches import longest_first, pad_batch

        if self.labels is None:
            raise PtqflowError(f"calibration: {self.source} has no labels to score accuracy on")
        n = min(n_rows, len(self.rows))
        order = [i for rows in longest_first([len(r) for r in self.rows[:n]], batch_size) for i in rows]
        batches = [pad_batch([self.rows[i] for i in order[j : j + batch_size]], self.pad_id, None,
                             [self.token_types[i] for i in order[j : j + batch_size]] if self.token_types is not None else None)
                   for j in range(0, n, batch_size)]
        return batches, torch.tensor([self.labels[i] for i in order])


def from_validation(prepared_dir: str | Path, pad_id: int) -> Calibration:
    """The validation rows of the prepared data, in their stored order, padded with the model's `pad_id` (as
    evaluation pads)."""
    from .data import load_prepared

    data, meta = load_prepared(prepared_dir)
    if SPLIT not in data:
        raise PtqflowError(f"{prepared_dir}: no {SPLIT} split to calibrate on (re-run the prepare stage)")
    split = data[SPLIT]
    types = split["token_type_ids"] if "token_type_ids" in split.column_names else None
    labels = list(split["labels"]) if "labels" in split.column_names else None
    return Calibration(split["input_ids"], pad_id, int(meta["max_length"]), f"{prepared_dir} {SPLIT} split", types, labels)


def random_rows(n_rows: int, length: int, vocab_size: int, pad_id: int, seed: int = 0) -> Calibration:
    """Seeded random token ids (no data at hand: `ptqflow bench --from-config`)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, vocab_size, (n_rows, length), generator=gen).tolist()
    return Calibration(rows, pad_id, length, f"{n_rows} seeded random token id rows (seed {seed})")


def for_model(prepared_dir: str | Path, model_dir: str | Path) -> Calibration:
    """Validation rows padded with the pad token of the model in `model_dir` (the quantize stage's calibration)."""
    from transformers import AutoConfig

    return from_validation(prepared_dir, int(AutoConfig.from_pretrained(str(model_dir)).pad_token_id or 0))
