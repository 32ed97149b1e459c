"""Gather every variant's metrics into the report's Table 1, per-class tables and figures.

Compression = size_on_disk(baseline) / size_on_disk(variant); speedup = median latency(baseline) /
median latency(variant); both against `report.baseline` (fp32), measured in the same pipeline run with
the same latency protocol. Sizes are shown in `report.size_unit` (MiB = 2**20 bytes unless set to MB).

The recommendation is computed from these numbers, nothing about it is fixed in code. A variant is
*acceptable* when its accuracy drop against the baseline is not significant (McNemar p >= alpha) or is at
most `report.max_accuracy_drop` (a fraction: 0.005 = 0.5 points). Among the acceptable variants (the
baseline included) the report names the smallest on disk (ties: the faster) and the fastest by median
latency (ties: the smaller). Variant A dominates B when A is at least as accurate, as small and as fast,
and strictly better in one of them; the Pareto front is the set of variants no other variant dominates.
Variants that could not run on this machine (`skipped`) are listed apart, with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402
import numpy as np  # noqa: E402

from .config import ReportParams  # noqa: E402
from .errors import PtqflowError  # noqa: E402
from .io import atomic_dir, read_json, write_json, write_text  # noqa: E402

FIGURES = ("metrics_comparison.png", "size_latency.png", "pareto.png")


def collect(variants: list[str], metrics_dir: str | Path) -> dict[str, dict]:
    out = {}
    for name in variants:
        path = Path(metrics_dir) / f"{name}.json"
        if not path.is_file():
            raise PtqflowError(f"{path}: missing (run: dvc repro evaluate@{name})")
        out[name] = read_json(path)
    return out


def split_skipped(metrics: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """(metrics of the variants that ran, {variant: why it was skipped})."""
    ran = {n: m for n, m in metrics.items() if "skipped" not in m}
    return ran, {n: m["skipped"] for n, m in metrics.items() if "skipped" in m}


def compare_all(variants: list[str], predictions_dir: str | Path, params: ReportParams) -> dict[str, dict]:
    """Statistics of every variant against the baseline on the same test examples (see stats.py)."""
    import pandas as pd

    from .stats import compare_predictions

    def read(name: str) -> pd.DataFrame:
        path = Path(predictions_dir) / f"{name}.csv"
        if not path.is_file():
            raise PtqflowError(f"{path}: missing (run: dvc repro evaluate@{name})")
        return pd.read_csv(path, keep_default_na=False)

    base = read(params.baseline)
    out = {}
    for name in variants:
        pred = read(name)
        if len(pred) != len(base) or not pred["actual"].equals(base["actual"]):
            raise PtqflowError(f"{name}: predictions are not on the same test examples as {params.baseline}")
        out[name] = compare_predictions(
            base["actual"].to_numpy(), base["predicted"].to_numpy(), pred["predicted"].to_numpy(),
            params.bootstrap_resamples, params.seed, params.alpha,
        )
    return out


def summary_rows(metrics: dict[str, dict], params: ReportParams, stats: dict[str, dict] | None = None) -> list[dict]:
    """One row per variant: the numbers of Table 1, compression and speedups against the baselines, statistics."""
    if params.baseline not in metrics:
        raise PtqflowError(f"params.yaml: report.baseline {params.baseline!r} is not among the variants ({', '.join(metrics)})")
    base = metrics[params.baseline]
    half = metrics.get(params.half_baseline)
    rows = []
    for name, m in metrics.items():
        rows.append(
            {
                "variant": name,
                "scheme": m["scheme"],
                "accuracy": m["accuracy"],
                "precision": m["precision_macro"],
                "recall": m["recall_macro"],
                "f1": m["f1_macro"],
                "size": m["size_on_disk"][params.size_unit],
                "memory": m["memory_footprint"][params.size_unit],
                "size_bytes": m["size_on_disk"]["bytes"],
                "latency_ms": m["latency"]["median_ms"],
                "latency_p95_ms": m["latency"]["p95_ms"],
                "compile": m.get("compile", "none"),
                "first_call_ms": m["latency"].get("first_call_ms"),
                "compression": base["size_on_disk"]["bytes"] / m["size_on_disk"]["bytes"],
                "speedup": base["latency"]["median_ms"] / m["latency"]["median_ms"],
                "speedup_vs_half": half["latency"]["median_ms"] / m["latency"]["median_ms"] if half else None,
                "runtime_dtype": m.get("runtime_dtype"),
                **({"stats": stats[name]} if stats and name in stats else {}),
            }
        )
    return rows


COSTS = ("size_bytes", "latency_ms")  # lower is better; accuracy: higher is better


def dominates(a: dict, b: dict, costs: tuple[str, ...] = COSTS) -> bool:
    """a is at least as accurate as b and at most as costly in each of `costs`, and strictly better in one."""
    ge = a["accuracy"] >= b["accuracy"] and all(a[c] <= b[c] for c in costs)
    gt = a["accuracy"] > b["accuracy"] or any(a[c] < b[c] for c in costs)
    return ge and gt


def pareto_front(rows: list[dict], costs: tuple[str, ...] = COSTS) -> list[str]:
    """Variants that no other variant dominates (accuracy up, `costs` down), in row order."""
    return [r["variant"] for r in rows if not any(dominates(o, r, costs) for o in rows if o is not r)]


def acceptable(row: dict, base: dict, params: ReportParams) -> tuple[bool, str]:
    """Whether the variant's accuracy is acceptable against the baseline, and why (module docstring)."""
    if row["variant"] == base["variant"]:
        return True, "the baseline"
    drop = base["accuracy"] - row["accuracy"]
    change = f"accuracy {-drop * 100:+.2f} pts"
    st = row.get("stats")
    if st and st["mcnemar_p"] >= params.alpha:
        return True, f"{change}, not significant (McNemar p = {st['mcnemar_p']:.3g} >= {params.alpha})"
    p = f" (McNemar p = {st['mcnemar_p']:.3g})" if st else ""
    limit = f"report.max_accuracy_drop ({params.max_accuracy_drop * 100:.2f} pts)"
    if drop <= params.max_accuracy_drop:
        return True, f"{change}, significant{p} but within {limit}"
    return False, f"{change}, significant{p} and a drop above {limit}"


def recommend(rows: list[dict], params: ReportParams) -> dict:
    """The smallest and the fastest acceptable variant, with every variant's verdict and the Pareto front."""
    base = next(r for r in rows if r["variant"] == params.baseline)
    verdicts = {r["variant"]: acceptable(r, base, params) for r in rows}
    ok = [r for r in rows if verdicts[r["variant"]][0]]
    smallest = min(ok, key=lambda r: (r["size_bytes"], r["latency_ms"]))
    fastest = min(ok, key=lambda r: (r["latency_ms"], r["size_bytes"]))
    return {
        "smallest": smallest["variant"],
        "fastest": fastest["variant"],
        "acceptable": [r["variant"] for r in ok],
        "verdicts": {n: {"acceptable": v[0], "why": v[1]} for n, v in verdicts.items()},
        "pareto_front": pareto_front(rows),
        "max_accuracy_drop": params.max_accuracy_drop,
        "alpha": params.alpha,
    }


def recommendation_markdown(rec: dict, rows: list[dict], params: ReportParams) -> str:
    by = {r["variant"]: r for r in rows}

    def line(name: str) -> str:
        r = by[name]
        return (f"`{name}`: {r['size']:.2f} {params.size_unit} ({r['compression']:.2f}x smaller than `{params.baseline}`), "
                f"{r['latency_ms']:.2f} ms median ({r['speedup']:.2f}x), accuracy {r['accuracy']:.4f}; "
                f"{rec['verdicts'][name]['why']}")

    out = [
        f"- Smallest acceptable variant: {line(rec['smallest'])}.",
        f"- Fastest acceptable variant: {line(rec['fastest'])}.",
        f"- Pareto front (accuracy, size, latency): {', '.join(f'`{n}`' for n in rec['pareto_front'])}.",
        "",
        "| variant | acceptable | why |",
        "|---|---|---|",
        *[f"| {n} | {'yes' if v['acceptable'] else 'no'} | {v['why']} |" for n, v in rec["verdicts"].items()],
    ]
    return "\n".join(out)


def format_table(rows: list[dict], unit: str) -> str:
    """The comparison as a markdown table, one row per variant (what `make run` prints)."""
    head = ["variant", "accuracy", "Δacc [95% CI]", "McNemar p", "macro F1", f"size ({unit})", "latency median (ms)",
            "p95 (ms)", "compression", "speedup vs fp32", "vs half"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        st = r.get("stats")
        cells = [
            r["variant"], f"{r['accuracy']:.4f}", _delta(st), f"{st['mcnemar_p']:.3g}" if st else "-", f"{r['f1']:.4f}",
            f"{r['size']:.2f}", f"{r['latency_ms']:.2f}", f"{r['latency_p95_ms']:.2f}", f"{r['compression']:.2f}x",
            f"{r['speedup']:.2f}x", _x(r["speedup_vs_half"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _delta(st: dict | None) -> str:
    if not st:
        return "-"
    return f"{st['delta_accuracy'] * 100:+.2f} pts [{st['delta_ci95_low'] * 100:+.2f}, {st['delta_ci95_high'] * 100:+.2f}]"


def table1(rows: list[dict], unit: str) -> str:
    """The report's Table 1 layout: one column per variant, one row per metric."""
    spec = [
        ("Accuracy", "accuracy", "{:.4f}"), ("Precision (macro)", "precision", "{:.4f}"),
        ("Recall (macro)", "recall", "{:.4f}"), ("F1-Score (macro)", "f1", "{:.4f}"),
        (f"Size on disk ({unit})", "size", "{:.2f}"), (f"Memory footprint ({unit})", "memory", "{:.2f}"),
        ("Inference median (ms)", "latency_ms", "{:.2f}"), ("Inference p95 (ms)", "latency_p95_ms", "{:.2f}"),
        ("Compression", "compression", "{:.2f}x"), ("Speedup vs fp32", "speedup", "{:.2f}x"),
        ("torch.compile mode", "compile", "{}"),
    ]
    lines = ["| Metric | " + " | ".join(r["variant"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for label, key, fmt in spec:
        lines.append(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
    lines.append("| Speedup vs half precision | " + " | ".join(_x(r["speedup_vs_half"]) for r in rows) + " |")
    lines.append("| First call (ms; includes compilation) | " + " | ".join(
        f"{r['first_call_ms']:.1f}" if r["first_call_ms"] is not None else "-" for r in rows) + " |")
    if all("stats" in r for r in rows):
        lines.append("| Accuracy Δ vs baseline [95% CI] | " + " | ".join(_delta(r["stats"]) for r in rows) + " |")
        lines.append("| Agreement with baseline | " + " | ".join(f"{r['stats']['agreement']:.4f}" for r in rows) + " |")
        lines.append("| McNemar exact p | " + " | ".join(f"{r['stats']['mcnemar_p']:.3g}" for r in rows) + " |")
        lines.append("| Verdict | " + " | ".join(r["stats"]["verdict"] for r in rows) + " |")
    return "\n".join(lines)


def per_class_table(m: dict) -> str:
    lines = ["| Class | Accuracy | Precision | Recall | F1-Score | Support |", "|---|---|---|---|---|---|"]
    for name, c in m["per_class"].items():
        lines.append(f"| {name} | {c['accuracy']:.4f} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    return "\n".join(lines)


def render_markdown(
    metrics: dict[str, dict], rows: list[dict], params: ReportParams, figures: list[str],
    rec: dict | None = None, skipped: dict[str, str] | None = None,
) -> str:
    base = metrics[params.baseline]
    lat, env = base["latency"], base["environment"]
    unit_note = "MiB = 2^20 bytes" if params.size_unit == "MiB" else "MB = 10^6 bytes"
    out = [
        "# Post-training quantization report",
        "",
        f"Test rows: {base['test_rows']}. Device: {env['device_name']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, bitsandbytes {env['bitsandbytes']}.",
        f"Latency: batch {lat['batch_size']} x {lat['seq_len']} tokens (padded), {lat['warmup']} warm-up + "
        f"{lat['iters']} timed forward passes, {lat['timer']}, {lat['threads']} threads; median and p95.",
        f"Sizes: weight files on disk ({unit_note}); memory footprint = parameters + buffers as loaded. "
        f"Compression and speedup are against `{params.baseline}`.",
        "",
        "## Table 1: comparison of all variants",
        "",
        table1(rows, params.size_unit),
        "",
        f"Statistics against `{params.baseline}` on the same test examples: accuracy difference with a paired "
        f"bootstrap 95% interval ({params.bootstrap_resamples} resamples, seed {params.seed}), agreement (share of "
        f"identical predictions) and McNemar's exact test on the discordant pairs; \"no significant change\" "
        f"means p >= {params.alpha}.",
        "",
        "Run-time precision of each variant:",
        "",
        *[f"- `{r['variant']}` ({r['scheme']}): {r['runtime_dtype']}" for r in rows],
        "",
    ]
    if skipped:
        out += ["## Variants not run on this machine", "",
                *[f"- `{name}`: {why}" for name, why in skipped.items()], ""]
    if rec:
        out += ["## Recommendation", "",
                f"Acceptable: accuracy drop against `{params.baseline}` not significant (McNemar p >= {params.alpha}) or at most "
                f"{params.max_accuracy_drop * 100:.2f} points (`report.max_accuracy_drop`). Latency is the median above, "
                "on this machine; compilation time is not included.", "",
                recommendation_markdown(rec, rows, params), "", "![pareto](" + next(f for f in figures if "pareto" in f) + ")", ""]
    for i, (name, m) in enumerate(metrics.items(), start=2):
        out += [f"## Table {i}: per-class metrics, {name}", "", per_class_table(m), ""]
    out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(out)


# -------------------------------------------------------------------------------------------- figures
def plot_confusion(m: dict, path: Path) -> None:
    cm = np.array(m["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ConfusionMatrixDisplay(cm, display_labels=m["confusion_matrix"]["labels"]).plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(f"Confusion matrix: {m['variant']} (accuracy {m['accuracy']:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(rows: list[dict], path: Path) -> None:
    keys = [("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1")]
    x = np.arange(len(keys))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(rows):
        ax.bar(x + i * width - 0.4 + width / 2, [r[k] for k, _ in keys], width, label=r["variant"])
    values = [r[k] for r in rows for k, _ in keys]
    lo = max(0.0, min(values) - 0.02)
    ax.set_ylim(lo, min(1.0, max(values) + 0.01))
    ax.set_xticks(x, [label for _, label in keys])
    ax.set_ylabel("score (macro average)")
    ax.set_title(f"Classification metrics by variant (y axis from {lo:.3f}, zoomed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_size_latency(rows: list[dict], unit: str, path: Path) -> None:
    names = [r["variant"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    bars = a.bar(names, [r["size"] for r in rows], color="tab:blue")
    a.bar_label(bars, [f"{r['size']:.1f}\n{r['compression']:.2f}x" for r in rows], fontsize=8)
    a.set_ylabel(f"weights on disk ({unit})")
    a.set_title("Model size")
    bars = b.bar(names, [r["latency_ms"] for r in rows], color="tab:orange",
                 yerr=[[0] * len(rows), [r["latency_p95_ms"] - r["latency_ms"] for r in rows]], capsize=3)
    b.bar_label(bars, [f"{r['latency_ms']:.1f}\n{r['speedup']:.2f}x" for r in rows], fontsize=8, padding=6)
    b.set_ylabel("median latency per batch (ms); whisker = p95")
    b.set_title("Inference latency")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
        ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(rows: list[dict], rec: dict, params: ReportParams, path: Path) -> None:
    """Accuracy against size and against latency, each variant a labelled point; the non-dominated points of
    each view joined by a line; filled markers = on the 3-way (accuracy, size, latency) Pareto front."""
    front = set(rec["pareto_front"])
    base = next(r for r in rows if r["variant"] == params.baseline)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, key, label in ((axes[0], "size", f"weights on disk ({params.size_unit}, log scale)"),
                           (axes[1], "latency_ms", "median latency per batch (ms, log scale)")):
        in_view = set(pareto_front(rows, (key,)))
        view = sorted((r for r in rows if r["variant"] in in_view), key=lambda r: r[key])
        ax.plot([r[key] for r in view], [r["accuracy"] for r in view], "-", color="tab:green", lw=1.2, label="non-dominated in this view")
        for r in rows:
            on = r["variant"] in front
            ok = rec["verdicts"][r["variant"]]["acceptable"]
            if ok:
                ax.scatter(r[key], r["accuracy"], s=45, marker="o", facecolors="tab:blue" if on else "none", edgecolors="tab:blue")
            else:
                ax.scatter(r[key], r["accuracy"], s=45, marker="x", c="tab:red")
        points: dict[tuple, list[str]] = {}  # variants at the same point share one label
        for r in rows:
            points.setdefault((r[key], r["accuracy"]), []).append(r["variant"])
        for i, ((x, y), names) in enumerate(sorted(points.items())):
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -11), fontsize=7)
        ax.axhline(base["accuracy"] - params.max_accuracy_drop, ls="--", color="grey", lw=0.8,
                   label=f"{params.baseline} - max_accuracy_drop")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Accuracy vs size and latency (filled: Pareto front; x: not acceptable). "
                 f"Smallest acceptable: {rec['smallest']}; fastest: {rec['fastest']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(
    variants: list[str],
    metrics_dir: str | Path,
    predictions_dir: str | Path,
    params: ReportParams,
    report_path: str | Path,
    figures_dir: str | Path,
    comparison_path: str | Path,
) -> list[dict]:
    """Write the markdown report, the figures and metrics/comparison.json; returns the summary rows."""
    metrics, skipped = split_skipped(collect(variants, metrics_dir))
    if params.baseline in skipped:
        raise PtqflowError(f"report.baseline {params.baseline!r} was skipped on this machine: {skipped[params.baseline]}")
    rows = summary_rows(metrics, params, compare_all(list(metrics), predictions_dir, params))
    rec = recommend(rows, params)
    write_json(comparison_path, {
        "baseline": params.baseline,
        "half_baseline": params.half_baseline if params.half_baseline in metrics else None,
        "variants": {r["variant"]: {k: r[k] for k in ("compression", "speedup", "speedup_vs_half", "stats")} for r in rows},
        "recommendation": rec,
        "skipped": skipped,
    })
    names = [f"confusion_{name}.png" for name in metrics] + list(FIGURES)
    with atomic_dir(figures_dir) as tmp:
        for name, m in metrics.items():
            plot_confusion(m, tmp / f"confusion_{name}.png")
        plot_metrics(rows, tmp / FIGURES[0])
        plot_size_latency(rows, params.size_unit, tmp / FIGURES[1])
        plot_pareto(rows, rec, params, tmp / FIGURES[2])
    links = [os.path.relpath(Path(figures_dir) / n, Path(report_path).parent) for n in names]
    write_text(report_path, render_markdown(metrics, rows, params, links, rec, skipped))
    return rows
