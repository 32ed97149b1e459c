"""Which projections a quantization scheme hurts, and the most-quantized model that stays within an accuracy budget.

Sensitivity of projection p (one at a time: p quantized by the scheme, every other projection in float), on the
first `rows` validation rows (never test rows), against the float model's logits z (quantized: z^p):
    kl[p]   = mean over rows of KL(softmax(z) || softmax(z^p))                                       (1)
    nmse[p] = sum (z^p - z)^2 / sum z^2                                                               (2)
    delta_accuracy[p] = accuracy(z^p) - accuracy(z)   (on the rows' labels)                           (3)
Ranking is by (1): an accuracy change on a few hundred rows is mostly 0 or +-1 answer.

Budgeted search (as NNCF's accuracy control and Intel Neural Compressor's fallback do, on the validation rows):
with every projection quantized, the drop d(k) = accuracy(float) - accuracy(quantized except the k most
sensitive by (1), those kept in float) is measured on the same rows for k = 0, 1, 2, 4, ... until it fits, then
bisected between the last two k (assuming d falls as k grows); the smallest such k is chosen. "Fits" means the
upper end of a one-sided `confidence` interval of d(k) is <= max_drop: with c_i = 1 when row i is right under
the float model and r_i likewise under the candidate, d = mean(c - r), and the bound is the `confidence`
percentile of d over 2,000 paired bootstrap resamples of the rows (seeded). A point estimate (confidence 0.5)
on a few hundred rows passes a candidate whose true drop is often larger: measured here, a 4-bit candidate at
-0.23 points on 878 validation rows lost 0.92 points on the 7,600 test rows. What stays in 8 bits is
reported as the share of the body's multiply-accumulates per token, sum_{p quantized} K_p N_p / sum_p K_p N_p
(the projections' GEMMs; attention's two activation products are not projections and are not counted).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from . import structure


@torch.inference_mode()
def logits_on(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The model's float32 logits on the batches, concatenated in order."""
    return torch.cat([model(**batch).logits.float() for batch in batches])


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Formula (1): mean over rows of KL(softmax(reference) || softmax(other))."""
    p = torch.log_softmax(reference.double(), dim=-1)
    q = torch.log_softmax(other.double(), dim=-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def nmse(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Formula (2): squared error of the logits, normalized by the reference's energy."""
    return float(((other.double() - reference.double()) ** 2).sum() / (reference.double() ** 2).sum().clamp_min(1e-30))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())


def layer_and_type(model: nn.Module, name: str) -> tuple[str, str]:
    """('3', 'attention.self.query') for a projection inside transformer layer 3 (structure.layers), else
    ('other', name): the heatmap's row and column."""
    stack = structure.layers(model)
    prefix = next(n for n, m in model.named_modules() if m is stack)
    if name.startswith(prefix + "."):
        index, _, rest = name[len(prefix) + 1:].partition(".")
        return index, rest
    return "other", name


def macs(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Multiply-accumulates per token of each projection: K in x N out."""
    return {n: int(np.prod(structure.in_out_features(model.get_submodule(n)))) for n in names}


def swap(model: nn.Module, replacements: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Put `replacements` in place; returns the modules they replaced (to swap back)."""
    before = {n: model.get_submodule(n) for n in replacements}
    for name, module in replacements.items():
        structure.replace_module(model, name, module)
    return before


def per_projection(model: nn.Module, names: list[str], quantized: Callable[[str], nn.Module],
                   batches: list[dict[str, torch.Tensor]], labels: torch.Tensor, progress: bool = True) -> dict[str, dict]:
    """Formulas (1)-(3) for each projection in `names`, quantized alone (`quantized(name)` builds its layer)."""
    from tqdm.auto import tqdm

    reference = logits_on(model, batches)
    base_acc = accuracy(reference, labels)
    out = {}
    for name in tqdm(names, desc="sensitivity", unit="projection", disable=not progress):
        original = swap(model, {name: quantized(name)})
        try:
            z = logits_on(model, batches)
        finally:
            swap(model, original)
        row, kind = layer_and_type(model, name)
        out[name] = {"kl": kl_divergence(reference, z), "nmse": nmse(reference, z),
                     "delta_accuracy": accuracy(z, labels) - base_acc, "layer": row, "type": kind}
    return out


def step(search: str, message: str) -> None:
    """One console line per step of a long search (each candidate tried, its drop and bound), so that nothing runs
    for minutes without showing where it is."""
    import sys

    print(f"{search}: {message}", file=sys.stderr, flush=True)


def drop_upper_bound(base_right: np.ndarray, right: np.ndarray, confidence: float, resamples: int = 2000, seed: int = 0) -> float:
    """The `confidence` percentile of the paired bootstrap distribution of mean(base_right - right) (module docstring)."""
    diff = base_right.astype(np.float64) - right.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(np.percentile(means, confidence * 100))


def ladder_search(model: nn.Module, ranked: list[str], rungs: list[Callable[[str], nn.Module]],
                  batches: list[dict[str, torch.Tensor]], labels: torch.Tensor, max_drop: float, confidence: float = 0.95,
                  label: str = "budget search", rung_names: list[str] | None = None, base_right: np.ndarray | None = None) -> dict:
    """Per projection, a format of a ladder (rungs[0] the smallest / least accurate, ..., rungs[-1]; past the last:
    the float module as it is in `model`), the projections raised in `ranked` order (most sensitive first):
    everything starts on rung 0; the smallest k such that raising the first k projections still on rung r to
    rung r + 1 fits (`fits` of the module docstring: the one-sided `confidence` bound of the validation drop
    <= max_drop) is found by doubling then bisection; when even all of them on rung r + 1 do not fit, they all
    go up and the search repeats one rung higher. Float is reached only by those that rung L - 1 cannot hold.
    Returns {"levels": {name: rung index, len(rungs) = float}, the drop and bound of the result, every
    configuration tried (rung, k raised, drop, bound), ...}. `base_right`: the rows the reference model gets right
    (default: `model` as it is), when the model searched already carries other quantized parts."""
    names = rung_names or [f"rung {i}" for i in range(len(rungs))]
    if base_right is None:
        base_right = (logits_on(model, batches).argmax(-1) == labels).cpu().numpy()
    built: dict[tuple[str, int], nn.Module] = {}
    tried: dict[tuple, tuple[float, float]] = {}
    history: list[dict] = []

    def layer(name: str, level: int) -> nn.Module:
        if (name, level) not in built:
            built[(name, level)] = rungs[level](name)
        return built[(name, level)]

    def measure(levels: dict[str, int], rung: int, k: int) -> tuple[float, float]:
        key = tuple(levels[n] for n in ranked)
        if key not in tried:
            original = swap(model, {n: layer(n, lv) for n, lv in levels.items() if lv < len(rungs)})
            try:
                right = (logits_on(model, batches).argmax(-1) == labels).cpu().numpy()
            finally:
                swap(model, original)
            tried[key] = (float(base_right.mean() - right.mean()), drop_upper_bound(base_right, right, confidence))
            drop, bound = tried[key]
            history.append({"rung": names[rung], "raised": k, "drop": drop, "bound": bound})
            step(label, f"{k} raised from {names[rung]} -> validation drop {100 * drop:+.2f} points, bound {100 * bound:.2f} "
                        f"{'<=' if bound <= max_drop else '>'} {100 * max_drop:.2f} (candidate {len(tried)})")
        return tried[key]

    levels = {n: 0 for n in ranked}
    for rung in range(len(rungs)):
        at = [n for n in ranked if levels[n] == rung]

        def raised(k: int) -> dict[str, int]:
            return {**levels, **{n: rung + 1 for n in at[:k]}}

        def fits(k: int) -> bool:
            return measure(raised(k), rung, k)[1] <= max_drop

        n, lo, k = len(at), -1, 0  # invariant once found: fits(k), and not fits(lo)
        while k < n and not fits(k):
            lo, k = k, min(n, max(1, 2 * k))
        if k == n and not fits(n):
            levels = raised(n)  # all of them up one rung, and search again there
            continue
        while k - lo > 1 and lo >= 0:
            mid = (lo + k) // 2
            if fits(mid):
                k = mid
            else:
                lo = mid
        levels = raised(k)
        break
    final = tuple(levels[n] for n in ranked)
    drop, bound = tried.get(final, (0.0, 0.0))  # all float: no drop
    return {"levels": levels, "validation_drop": drop, "validation_drop_bound": bound, "confidence": confidence,
            "baseline_validation_accuracy": float(base_right.mean()), "max_drop": max_drop, "tried": history,
            "rows": int(labels.numel()), "ladder": [*names, "float"],
            "count": {name: sum(1 for lv in levels.values() if lv == i) for i, name in enumerate([*names, "float"])}}


def budget_search(model: nn.Module, ranked: list[str], quantized: Callable[[str], nn.Module],
                  batches: list[dict[str, torch.Tensor]], labels: torch.Tensor, max_drop: float,
                  confidence: float = 0.95, label: str = "budget search",
                  fallback: Callable[[str], nn.Module] | None = None, names: tuple[str, str] = ("quantized", "fallback")) -> dict:
    """The smallest k such that keeping the k most sensitive projections (`ranked`, most sensitive first) out of the
    quantized format and quantizing the rest drops validation accuracy by at most `max_drop`, judged by the upper
    `confidence` bound of the drop (module docstring). Kept means in float, or, with `fallback`, in that format
    first (e.g. W8A8 under a W8A4 search) and in float only where the fallback format does not fit either
    (ladder_search). Returns k, the kept names (everything not in the quantized format), the drop and every
    configuration measured."""
    rungs = [quantized] + ([fallback] if fallback is not None else [])
    record = ladder_search(model, ranked, rungs, batches, labels, max_drop, confidence, label,
                           rung_names=[names[0]] + ([names[1]] if fallback is not None else []))
    kept = [n for n in ranked if record["levels"][n] > 0]
    return {**record, "kept": kept, "k": len(kept), "fallback": [n for n in ranked if record["levels"][n] == 1] if fallback else [],
            "float": [n for n in ranked if record["levels"][n] == len(rungs)]}


def smallest_fitting(candidates: list[str], right: Callable[[str], np.ndarray], base_right: np.ndarray, max_drop: float,
                     confidence: float = 0.95, label: str = "size search") -> dict:
    """The first of `candidates` (ordered smallest model first) whose validation drop fits, judged like
    budget_search: right(c)[i] = 1 when row i is right under candidate c, base_right likewise under the float
    model, fits when the upper `confidence` bound of mean(base_right - right(c)) is <= max_drop. Stops at the
    first that fits; `chosen` is None when none does. Every candidate tried is recorded."""
    tried = []
    for candidate in candidates:
        r = right(candidate)
        tried.append({"candidate": candidate, "drop": float(base_right.mean() - r.mean()),
                      "bound": drop_upper_bound(base_right, r, confidence)})
        step(label, f"{candidate}: validation drop {100 * tried[-1]['drop']:+.2f} points, bound {100 * tried[-1]['bound']:.2f} "
                    f"{'<=' if tried[-1]['bound'] <= max_drop else '>'} {100 * max_drop:.2f}")
        if tried[-1]["bound"] <= max_drop:
            break
    chosen = tried[-1]["candidate"] if tried and tried[-1]["bound"] <= max_drop else None
    return {"chosen": chosen, "tried": tried, "max_drop": max_drop, "confidence": confidence, "rows": int(len(base_right)),
            "baseline_validation_accuracy": float(base_right.mean())}


def heatmap(sensitivity: dict[str, dict], path, title: str) -> None:
    """Layer x projection type, coloured by log10 of formula (1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted({v["layer"] for v in sensitivity.values()}, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r))
    cols = list(dict.fromkeys(v["type"] for v in sensitivity.values()))
    grid = np.full((len(rows), len(cols)), np.nan)
    for v in sensitivity.values():
        grid[rows.index(v["layer"]), cols.index(v["type"])] = np.log10(max(v["kl"], 1e-12))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 1.2 + 0.45 * len(rows)))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"layer {r}" if r.isdigit() else r for r in rows], fontsize=8)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white" if value < np.nanmean(grid) else "black")
    fig.colorbar(image, ax=ax, label="log10 KL(float || one projection quantized)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
