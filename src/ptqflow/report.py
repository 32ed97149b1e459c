"""Gather every variant's metrics into the report's Table 1, per-class tables and figures.

Compression = size_on_disk(baseline) / size_on_disk(variant); speedup = median latency(baseline) /
median latency(variant); both against `report.baseline` (fp32), measured in the same pipeline run with
the same latency protocol. Sizes are shown in `report.size_unit` (MiB = 2**20 bytes unless set to MB).
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

FIGURES = ("metrics_comparison.png", "size_latency.png")


def collect(variants: list[str], metrics_dir: str | Path) -> dict[str, dict]:
    out = {}
    for name in variants:
        path = Path(metrics_dir) / f"{name}.json"
        if not path.is_file():
            raise PtqflowError(f"{path}: missing (run: dvc repro evaluate@{name})")
        out[name] = read_json(path)
    return out


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
                "latency_ms": m["latency"]["median_ms"],
                "latency_p95_ms": m["latency"]["p95_ms"],
                "compression": base["size_on_disk"]["bytes"] / m["size_on_disk"]["bytes"],
                "speedup": base["latency"]["median_ms"] / m["latency"]["median_ms"],
                "speedup_vs_half": half["latency"]["median_ms"] / m["latency"]["median_ms"] if half else None,
                "runtime_dtype": m.get("runtime_dtype"),
                **({"stats": stats[name]} if stats and name in stats else {}),
            }
        )
    return rows


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
    ]
    lines = ["| Metric | " + " | ".join(r["variant"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for label, key, fmt in spec:
        lines.append(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
    lines.append("| Speedup vs half precision | " + " | ".join(_x(r["speedup_vs_half"]) for r in rows) + " |")
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


def render_markdown(metrics: dict[str, dict], rows: list[dict], params: ReportParams, figures: list[str]) -> str:
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
    metrics = collect(variants, metrics_dir)
    rows = summary_rows(metrics, params, compare_all(variants, predictions_dir, params))
    write_json(comparison_path, {
        "baseline": params.baseline,
        "half_baseline": params.half_baseline if params.half_baseline in metrics else None,
        "variants": {r["variant"]: {k: r[k] for k in ("compression", "speedup", "speedup_vs_half", "stats")} for r in rows},
    })
    names = [f"confusion_{name}.png" for name in metrics] + list(FIGURES)
    with atomic_dir(figures_dir) as tmp:
        for name, m in metrics.items():
            plot_confusion(m, tmp / f"confusion_{name}.png")
        plot_metrics(rows, tmp / FIGURES[0])
        plot_size_latency(rows, params.size_unit, tmp / FIGURES[1])
    links = [os.path.relpath(Path(figures_dir) / n, Path(report_path).parent) for n in names]
    write_text(report_path, render_markdown(metrics, rows, params, links))
    return rows
