"""The report's figures, readable at 20+ variants: horizontal bars sorted by value, variant names on the
axis, speed as the baseline-relative speedup with its 95% interval on a log axis, and Pareto points numbered
with the numbers placed so that no label covers another label or a point (a legend maps number -> variant).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from .pareto import pareto_front  # noqa: E402

VERDICT_COLOURS = {"faster": "tab:green", "slower": "tab:red", "no measurable difference": "tab:grey", "baseline": "tab:orange"}


def _plain_log_ticks(axis, base: int = 10) -> None:
    """Ticks on a log axis as plain numbers: 1, 2, 5, 10, ... (base 10) or 0.25, 0.5, 1, 2, ... (base 2)."""
    subs = (1.0, 2.0, 5.0) if base == 10 else (1.0,)
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=base, subs=subs))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _height(n: int) -> float:
    return max(3.0, 0.32 * n + 1.4)


def plot_confusion(m: dict, path: Path) -> None:
    cm = np.array(m["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ConfusionMatrixDisplay(cm, display_labels=m["confusion_matrix"]["labels"]).plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(f"Confusion matrix: {m['variant']} (accuracy {m['accuracy']:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(rows: list[dict], path: Path) -> None:
    """One line per variant (sorted by accuracy), its accuracy and macro precision / recall / F1 as markers."""
    order = sorted(rows, key=lambda r: r["accuracy"])
    keys = [("accuracy", "Accuracy", "o"), ("precision", "Precision", "^"), ("recall", "Recall", "v"), ("f1", "F1", "s")]
    fig, ax = plt.subplots(figsize=(8, _height(len(rows))))
    y = np.arange(len(order))
    for key, label, marker in keys:
        ax.scatter([r[key] for r in order], y, marker=marker, s=28, label=label, alpha=0.8)
    values = [r[k] for r in rows for k, _, _ in keys]
    lo, hi = min(values), max(values)
    pad = max(0.002, (hi - lo) * 0.1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_yticks(y, [r["variant"] for r in order], fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"score (macro average); x axis from {lo - pad:.3f}, zoomed")
    ax.set_title("Classification metrics by variant (sorted by accuracy)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_size_latency(rows: list[dict], params, path: Path) -> None:
    """Left: weights on disk, sorted, log axis, with the compression. Right: speedup against the baseline with
    its 95% interval, sorted, log axis, coloured by verdict; the baseline's bar is hatched, x = 1 marked."""
    n = len(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, _height(n)))
    by_size = sorted(rows, key=lambda r: r["size"], reverse=True)
    y = np.arange(n)
    bars = a.barh(y, [r["size"] for r in by_size], color=["tab:orange" if r["variant"] == params.baseline else "tab:blue" for r in by_size])
    a.bar_label(bars, [f" {r['size']:.2f} ({r['compression']:.2f}x)" for r in by_size], fontsize=7)
    a.set_yticks(y, [r["variant"] + (" (baseline)" if r["variant"] == params.baseline else "") for r in by_size], fontsize=8)
    a.set_xscale("log")
    _plain_log_ticks(a.xaxis)
    a.set_xlabel(f"weights on disk ({params.size_unit}, log scale); (compression vs {params.baseline})")
    a.set_title("Model size")
    a.margins(x=0.35)

    timed = [r for r in rows if r.get("speedup") is not None]
    by_speed = sorted(timed, key=lambda r: r["speedup"])
    y = np.arange(len(by_speed))
    speed = np.array([r["speedup"] for r in by_speed])
    lo = np.array([r["speedup_ci95"][0] for r in by_speed])
    hi = np.array([r["speedup_ci95"][1] for r in by_speed])
    bars = b.barh(y, speed - 1.0, left=1.0, color=[VERDICT_COLOURS[r["speed_verdict"]] for r in by_speed],
                  hatch=["//" if r["variant"] == params.baseline else "" for r in by_speed], edgecolor="black", linewidth=0.4,
                  xerr=[speed - lo, hi - speed], capsize=2, error_kw={"lw": 0.8})
    for yi, r in zip(y, by_speed):
        b.annotate(f"{r['speedup']:.2f}x  ({r['latency_ms']:.1f} ms)", (max(r["speedup_ci95"][1], 1.0), yi),
                   xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    b.axvline(1.0, color="black", lw=0.8)
    b.set_xscale("log")
    _plain_log_ticks(b.xaxis, base=2)
    b.set_yticks(y, [r["variant"] + (" (baseline)" if r["variant"] == params.baseline else "") for r in by_speed], fontsize=8)
    b.set_xlabel(f"speedup vs {params.baseline} (log scale; whisker = 95% interval)")
    b.set_title("Speed, timed interleaved in one process")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in VERDICT_COLOURS.values()]
    b.legend(handles, list(VERDICT_COLOURS), fontsize=7, loc="upper left")
    low, high = min(lo.min(initial=1.0), 1.0), max(hi.max(initial=1.0), 1.0)
    b.set_xlim(low / 1.25, high * 2.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _overlaps(box, boxes) -> bool:
    return any(box.x0 < o.x1 and box.x1 > o.x0 and box.y0 < o.y1 and box.y1 > o.y0 for o in boxes)


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Annotate each (x, y, text) near its point where the label covers no placed label, no point and stays
    inside the axes: candidate offsets on growing rings, first free one wins (a leader line when far).
    Returns the labels' display-space boxes (for tests: none overlaps another)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform([(x, y) for x, y, _ in points]) if points else []
    marker_boxes = [matplotlib.transforms.Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in pts]
    frame = ax.get_window_extent(renderer)
    placed = []
    rings = [(r, k) for r in (7, 13, 20, 28, 38, 50, 64) for k in range(12)]
    for x, y, text in sorted(points, key=lambda p: (p[0], p[1])):
        for r, k in rings:
            angle = np.pi / 4 + 2 * np.pi * k / 12
            dx, dy = r * np.cos(angle), r * np.sin(angle)
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                              arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"} if r > 13 else None)
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not _overlaps(box, placed) and not _overlaps(box, marker_boxes):
                placed.append(box)
                break
            ann.remove()
        else:  # nowhere free: keep the first ring's spot, still readable by the legend
            ann = ax.annotate(text, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=fontsize)
            placed.append(ann.get_window_extent(renderer))
    return placed


def plot_pareto(rows: list[dict], rec: dict, params, path: Path) -> list[list]:
    """Accuracy against size and against median latency (log axes), each variant a numbered point (legend on the
    right); the non-dominated points of each view joined; filled = on the 3-way Pareto front; x = not acceptable.
    Returns each panel's label boxes."""
    front = set(rec["pareto_front"])
    base = next(r for r in rows if r["variant"] == params.baseline)
    number = {r["variant"]: i + 1 for i, r in enumerate(rows)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    labels = []
    for ax, key, label, cost in ((axes[0], "size", f"weights on disk ({params.size_unit}, log scale)", "size_bytes"),
                                 (axes[1], "latency_ms", "median latency per batch (ms, log scale; interleaved benchmark)", "speed_cost")):
        shown = [r for r in rows if r.get(key) is not None]
        in_view = set(pareto_front(shown, (cost,)))
        view = sorted((r for r in shown if r["variant"] in in_view), key=lambda r: r[key])
        ax.plot([r[key] for r in view], [r["accuracy"] for r in view], "-", color="tab:green", lw=1.2, label="non-dominated in this view")
        for r in shown:
            on = r["variant"] in front
            if rec["verdicts"][r["variant"]]["acceptable"]:
                ax.scatter(r[key], r["accuracy"], s=40, marker="o", facecolors="tab:blue" if on else "none", edgecolors="tab:blue", zorder=3)
            else:
                ax.scatter(r[key], r["accuracy"], s=40, marker="x", c="tab:red", zorder=3)
        groups: dict[tuple, list[str]] = {}  # variants at the same point share one label
        for r in shown:
            groups.setdefault((r[key], r["accuracy"]), []).append(str(number[r["variant"]]))
        ax.axhline(base["accuracy"] - params.max_accuracy_drop, ls="--", color="grey", lw=0.8,
                   label=f"{params.baseline} - max_accuracy_drop")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.12)
        labels.append((ax, [(x, y, ",".join(ns)) for (x, y), ns in groups.items()]))
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7, loc="lower right")
    legend = "\n".join(f"{number[r['variant']]:>2}  {r['variant']}" + (" *" if r["variant"] in front else "") for r in rows)
    fig.text(0.86, 0.5, legend + "\n\n* Pareto front", fontsize=7, family="monospace", va="center", ha="left")
    fig.suptitle(f"Accuracy vs size and latency (filled: Pareto front; x: not acceptable). "
                 f"Smallest acceptable: {rec['smallest']}; fastest: {rec['fastest']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    boxes = [place_labels(ax, points) for ax, points in labels]  # after the layout: positions are final
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return boxes


def plot_profiles(rows: list[dict], rec: dict, params, path: Path) -> None:
    """One panel per traffic profile, side by side: each variant's speedup against the baseline on that profile,
    with its 95% interval, log axis, coloured by verdict, the variants in one order (by the first profile's
    speedup) so that a move between profiles is seen as a bar that grows or shrinks; the profile's fastest
    acceptable variant is marked with a star and its figure (ms per call or rows per second)."""
    keys = list(rows[0].get("profiles") or {})
    timed = [r for r in rows if r.get("speedup") is not None]
    if not keys or not timed:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no traffic profiles timed", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    order = sorted(timed, key=lambda r: r["profiles"][keys[0]]["speedup"] or 0)
    y = np.arange(len(order))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys) + 1.5, _height(len(order))), sharey=True, squeeze=False)
    spans = [r["profiles"][k]["speedup_ci95"] for r in order for k in keys if r["profiles"][k]["speedup_ci95"]]
    low = min([s[0] for s in spans] + [1.0]) / 1.25
    high = max([s[1] for s in spans] + [1.0]) * 1.8
    for ax, k in zip(axes[0], keys):
        p = [r["profiles"][k] for r in order]
        speed = np.array([x["speedup"] or 1.0 for x in p])
        lo = np.array([x["speedup_ci95"][0] if x["speedup_ci95"] else s for x, s in zip(p, speed)])
        hi = np.array([x["speedup_ci95"][1] if x["speedup_ci95"] else s for x, s in zip(p, speed)])
        ax.barh(y, speed - 1.0, left=1.0, color=[VERDICT_COLOURS.get(x["speed_verdict"], "tab:grey") for x in p],
                edgecolor="black", linewidth=0.4, xerr=[speed - lo, hi - speed], capsize=2, error_kw={"lw": 0.8})
        best = rec.get("fastest_by_profile", {}).get(k)
        for yi, r, x in zip(y, order, p):
            figure = f"{x['rows_per_s']:.0f}/s" if x["statistic"] == "throughput" else f"{x['median_ms']:.1f} ms"
            ax.annotate(("★ " if r["variant"] == best else "") + f"{x['speedup']:.2f}x ({figure})", (max(hi[yi], 1.0), yi),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, base=2)
        ax.set_xlim(low, high)
        statistic = "rows per second" if p[0]["statistic"] == "throughput" else "latency of a call"
        ax.set_title(f"{k}: {statistic}", fontsize=10)
        ax.set_xlabel(f"speedup vs {params.baseline} (log; 95% interval)", fontsize=8)
    axes[0][0].set_yticks(y, [r["variant"] for r in order], fontsize=8)
    fig.suptitle("Speed per traffic profile (★ = fastest acceptable on that profile)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
