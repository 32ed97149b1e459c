"""Batches of token ids, as every variant is run on them: right-padded rows with an attention mask."""

from __future__ import annotations

import torch


def pad_batch(
    rows: list[list[int]], pad_id: int, length: int | None = None, token_types: list[list[int]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to `length` (default: the longest row) with an attention mask; with
    `token_types` (sentence pairs, architectures with segment embeddings) also token_type_ids, padded with 0."""
    length = length or max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    types = torch.zeros((len(rows), length), dtype=torch.long) if token_types is not None else None
    for i, row in enumerate(rows):
        row = row[:length]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        if types is not None:
            types[i, : len(row)] = torch.tensor(token_types[i][:length], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def longest_first(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of `batch_size`, longest rows first (ties in input order): each batch padded to
    its own longest row then holds rows of about one length, so little padding is computed. Evaluation and a
    packaged model's `predict` batch the same way, so that a variant whose arithmetic depends on the batch
    (per-batch dynamic activation ranges, e.g. ONNX Runtime's dynamic int8) gives the same answers in both."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def buckets(max_length: int, count: int = 4, multiple: int = 8) -> list[int]:
    """`count` padded lengths up to `max_length` (e.g. 32, 64, 96, 128), each a multiple of `multiple`: the few
    shapes a compiled variant is evaluated at, so that it compiles once per bucket instead of once per length."""
    out = sorted({min(max_length, -(-max_length * k // count // multiple) * multiple) for k in range(1, count + 1)})
    return out


def bucketed(rows: list[list[int]], lengths: list[int], batch_size: int) -> tuple[list[list[int]], int]:
    """(rows padded with repeats of the first row up to `batch_size`, the smallest of `lengths` that holds the
    longest row): every batch of a compiled variant then has one of len(lengths) shapes. The repeated rows'
    outputs are dropped by the caller (the first `len(rows)` answers are the real ones)."""
    longest = max(len(r) for r in rows)
    length = next((b for b in lengths if b >= longest), lengths[-1])
    return rows + [rows[0]] * (batch_size - len(rows)), length


def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full (unpadded) batch of seeded random token ids: a transformer's compute does not depend on the ids."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def cycled_rows(rows: list[list[int]], n: int) -> list[list[int]]:
    """The first `n` rows, cycling when there are fewer."""
    return [rows[i % len(rows)] for i in range(n)]


def profile_batches(
    rows: list[list[int]], profile, pad_id: int, max_length: int, seed: int = 0, token_types: list[list[int]] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The calls of one traffic profile (config.ProfileParams) over real rows, drawn with a seeded generator (the
    same calls in every run):
    - `order: random`: `profile.rows` rows drawn from `rows` (cycled when there are fewer), in calls of
      `profile.batch_size` as they come (a server's arrival order);
    - `order: by_length`: length-bucketed, as a batching server that groups a long queue by length (or an offline
      job that sorts its rows) forms them: every row sorted by length and cut into calls of `batch_size`
      neighbours, of which ceil(rows / batch_size) calls are drawn, so each call holds rows of about one length and
      the calls follow the length distribution of the whole split.
    Each call is padded to its own longest row (`padding: longest`; one row: no padding) or to `max_length`
    (`fixed`, the 16 x 128 protocol of published figures)."""
    import math

    import numpy as np

    gen = np.random.default_rng(seed)
    size = profile.batch_size
    if profile.order == "by_length":
        pool = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
        neighbours = [pool[i : i + size] for i in range(0, len(pool), size)]
        count = math.ceil(profile.rows / size)
        drawn = gen.permutation(len(neighbours)).tolist()
        chunks = [neighbours[drawn[k % len(drawn)]] for k in range(count)]
    else:
        picked = gen.permutation(len(rows))[: profile.rows].tolist()
        picked += [picked[i % len(picked)] for i in range(profile.rows - len(picked))]
        chunks = [picked[start : start + size] for start in range(0, len(picked), size)]
    length = max_length if profile.padding == "fixed" else None
    return [pad_batch([rows[i] for i in chunk], pad_id, length,
                      [token_types[i] for i in chunk] if token_types is not None else None) for chunk in chunks]


def tokens(calls: list[dict[str, torch.Tensor]]) -> dict:
    """What a profile's calls hold: rows, real tokens per row (mean, median, p95), and the share of computed
    positions that are padding."""
    import numpy as np

    real = np.concatenate([c["attention_mask"].sum(1).numpy() for c in calls])
    computed = sum(int(c["attention_mask"].numel()) for c in calls)
    return {"calls": len(calls), "rows": int(real.size), "tokens_mean": round(float(real.mean()), 1),
            "tokens_median": float(np.median(real)), "tokens_p95": float(np.percentile(real, 95)),
            "padding_share": round(1 - float(real.sum()) / computed, 3)}
