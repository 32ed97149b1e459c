"""Gather every variant's scores (evaluate@), timings (benchmark) and statistics into the report.

Compression = size_on_disk(baseline) / size_on_disk(variant). Speed comes from the `benchmark` stage, where
every variant was timed interleaved in one process: speedup = the median over rounds of the paired ratio
baseline / variant, with a bootstrap 95% interval over rounds (stats.py). A variant is called faster or
slower only when that interval excludes 1 (and the difference exceeds `report.speed_equivalence`);
otherwise "no measurable difference", and it counts as equal in speed to the baseline (effective speedup
1.0) in the recommendation and the Pareto front. `report.half_baseline: auto` takes the faster of the
half-precision casts (scheme `cast`, not compiled) on the measuring machine. Sizes are shown in
`report.size_unit` (MiB = 2**20 bytes unless set to MB).

The recommendation is computed from these numbers, nothing about it is fixed in code. A variant is
*acceptable* when its accuracy drop against the baseline is not significant (McNemar p, adjusted for the number of variants
(report.multiple_comparisons), >= alpha) or is at
most `report.max_accuracy_drop` (a fraction: 0.005 = 0.5 points). Among the acceptable variants (the
baseline included) the report names the smallest on disk (ties: the faster) and the fastest by effective
speedup (ties: the smaller). Variant A dominates B when A is at least as accurate, as small and as fast
(effective speedup), and strictly better in one of them; the Pareto front is the set of variants no other
variant dominates. Variants that could not run on this machine (`skipped`) are listed apart, with the reason.

Outputs: reports/report.md, plots/figures/*.png, metrics/comparison.json (every number of the comparison),
metrics/eval/<variant>.json (the dozen numbers `dvc metrics show/diff` compare) and plots/pareto.csv (the
data of `dvc plots` accuracy-vs-latency and accuracy-vs-size views).
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ReportParams
from .errors import PtqflowError
from .figures import plot_confusion, plot_metrics, plot_pareto, plot_size_latency
from .io import atomic_dir, read_json, write_json, write_text
from .benchmark import speed_text
from .pareto import pareto_front, speed_cost

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

    from .stats import apply_adjustment

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
    return apply_adjustment(out, params.multiple_comparisons, params.alpha, exclude=params.baseline)


def half_baseline(details: dict[str, dict], params: ReportParams, bench: dict) -> str | None:
    """The variant that the "vs half" column is against: named, or (auto) the faster half-precision cast here."""
    from .benchmark import fastest_half

    if params.half_baseline != "auto":
        return params.half_baseline if params.half_baseline in details else None
    casts = [n for n, d in details.items()
             if d.get("scheme") == "cast" and d.get("compile", "none") == "none" and d.get("runtime_dtype") in ("float16", "bfloat16")]
    return fastest_half(bench, casts)


def summary_rows(details: dict[str, dict], params: ReportParams, bench: dict, stats: dict[str, dict] | None = None) -> list[dict]:
    """One row per variant: Table 1's numbers, compression, speedups with intervals and verdicts, statistics."""
    from .benchmark import latency_at, speeds_against
    from .stats import SAME

    if params.baseline not in details:
        raise PtqflowError(f"params.yaml: report.baseline {params.baseline!r} is not among the variants ({', '.join(details)})")
    bs = bench["protocol"]["batch_sizes"][0]
    half = half_baseline(details, params, bench)
    args = (bs, params.bootstrap_resamples, params.seed, params.speed_equivalence, params.alpha, params.multiple_comparisons)
    speed = speeds_against(bench, params.baseline, *args)
    speed_half = speeds_against(bench, half, *args) if half else {}
    base = details[params.baseline]
    rows = []
    for name, m in details.items():
        rec = bench["variants"].get(name, {})
        lat = latency_at(rec, bs) or {}
        sp, sh = speed.get(name), speed_half.get(name)
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
                "latency_ms": lat.get("median_ms"),
                "latency_p95_ms": lat.get("p95_ms"),
                "latency_iqr_ms": lat.get("iqr_ms"),
                "timed": rec.get("timed", f"not timed: {rec.get('skipped', 'absent from the benchmark')}"),
                "compile": m.get("compile", "none"),
                "first_call_ms": rec.get("first_call_ms", {}).get(str(bs)),
                "compression": base["size_on_disk"]["bytes"] / m["size_on_disk"]["bytes"],
                "speedup": sp["speedup"] if sp else None,
                "speedup_ci95": sp["speedup_ci95"] if sp else None,
                "speed_verdict": ("baseline" if name == params.baseline else sp["speed_verdict"]) if sp else "not timed",
                "speedup_ci_verdict": sp["speedup_ci_verdict"] if sp else None,
                "speed_verdict_level": sp["verdict_level"] if sp else None,
                "effective_speedup": (1.0 if sp["speed_verdict"] == SAME or name == params.baseline else sp["speedup"]) if sp else None,
                "speedup_vs_half": sh["speedup"] if sh else None,
                "speedup_vs_half_ci95": sh["speedup_ci95"] if sh else None,
                "speed_verdict_vs_half": sh["speed_verdict"] if sh else None,
                "half_baseline": half,
                "runtime_dtype": m.get("runtime_dtype"),
                **({"stats": stats[name]} if stats and name in stats else {}),
            }
        )
    return rows


def acceptable(row: dict, base: dict, params: ReportParams) -> tuple[bool, str]:
    """Whether the variant's accuracy is acceptable against the baseline, and why (module docstring)."""
    if row["variant"] == base["variant"]:
        return True, "the baseline"
    drop = base["accuracy"] - row["accuracy"]
    change = f"accuracy {-drop * 100:+.2f} pts"
    st = row.get("stats")
    if st and st.get("mcnemar_p_adjusted", st["mcnemar_p"]) >= params.alpha:
        return True, f"{change}, not significant ({_p_text(st)} >= {params.alpha})"
    p = f" ({_p_text(st)})" if st else ""
    limit = f"report.max_accuracy_drop ({params.max_accuracy_drop * 100:.2f} pts)"
    if drop <= params.max_accuracy_drop:
        return True, f"{change}, significant{p} but within {limit}"
    return False, f"{change}, significant{p} and a drop above {limit}"


ADJUSTMENT_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no adjustment"}


def _p_text(st: dict) -> str:
    """'McNemar p = 0.021, Holm-adjusted 0.19' (or the raw p alone when nothing was adjusted)."""
    raw = f"McNemar p = {st['mcnemar_p']:.3g}"
    method = st.get("adjustment", "none") if "mcnemar_p_adjusted" in st else "none"
    return raw if method == "none" else f"{raw}, {ADJUSTMENT_NAMES[method]}-adjusted {st['mcnemar_p_adjusted']:.3g}"


def recommend(rows: list[dict], params: ReportParams) -> dict:
    """The smallest and the fastest acceptable variant, with every variant's verdict and the Pareto front."""
    from .stats import FASTER

    base = next(r for r in rows if r["variant"] == params.baseline)
    verdicts = {r["variant"]: acceptable(r, base, params) for r in rows}
    ok = [r for r in rows if verdicts[r["variant"]][0]]
    smallest = min(ok, key=lambda r: (r["size_bytes"], speed_cost(r)))
    fastest = min(ok, key=lambda r: (speed_cost(r), r["size_bytes"]))
    return {
        "smallest": smallest["variant"],
        "fastest": fastest["variant"],
        "fastest_is_measurably_faster": fastest["speed_verdict"] == FASTER,
        "acceptable": [r["variant"] for r in ok],
        "verdicts": {n: {"acceptable": v[0], "why": v[1]} for n, v in verdicts.items()},
        "pareto_front": pareto_front(rows),
        "max_accuracy_drop": params.max_accuracy_drop,
        "alpha": params.alpha,
        "multiple_comparisons": params.multiple_comparisons,
    }


def recommendation_markdown(rec: dict, rows: list[dict], params: ReportParams) -> str:
    by = {r["variant"]: r for r in rows}

    def line(name: str) -> str:
        r = by[name]
        lat = f"{r['latency_ms']:.2f} ms median" if r["latency_ms"] is not None else "not timed"
        return (f"`{name}`: {r['size']:.2f} {params.size_unit} ({r['compression']:.2f}x smaller than `{params.baseline}`), "
                f"{lat}, speed vs `{params.baseline}` {speed_text(r)}: {r['speed_verdict']}; accuracy {r['accuracy']:.4f}; "
                f"{rec['verdicts'][name]['why']}")

    fastest_note = "" if rec["fastest_is_measurably_faster"] else (
        f" No acceptable variant is measurably faster than `{params.baseline}` on this machine; among those equal in "
        "speed, the smallest is named.")
    out = [
        f"- Smallest acceptable variant: {line(rec['smallest'])}.",
        f"- Fastest acceptable variant: {line(rec['fastest'])}.{fastest_note}",
        f"- Pareto front (accuracy, size, speed): {', '.join(f'`{n}`' for n in rec['pareto_front'])}.",
        "",
        "| variant | acceptable | why |",
        "|---|---|---|",
        *[f"| {n} | {'yes' if v['acceptable'] else 'no'} | {v['why']} |" for n, v in rec["verdicts"].items()],
    ]
    return "\n".join(out)


def format_table(rows: list[dict], unit: str, baseline: str = "fp32") -> str:
    """The comparison as a markdown table, one row per variant (what `make run` prints)."""
    half = next((r["half_baseline"] for r in rows if r.get("half_baseline")), None)
    head = ["variant", "accuracy", "Δacc [95% CI]", "McNemar p", "p adjusted", "macro F1", f"size ({unit})", "compression",
            "median (ms)", "p95 (ms)", f"speedup vs {baseline} [95% CI]", "speed", f"vs {half or 'half'} [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        st = r.get("stats")
        cells = [
            r["variant"], f"{r['accuracy']:.4f}", _delta(st), f"{st['mcnemar_p']:.3g}" if st else "-",
            _p_adjusted(st), f"{r['f1']:.4f}",
            f"{r['size']:.2f}", f"{r['compression']:.2f}x", _ms(r["latency_ms"]), _ms(r["latency_p95_ms"]),
            speed_text(r), r["speed_verdict"], speed_text(r, "_vs_half"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _p_adjusted(st: dict | None) -> str:
    if not st or "mcnemar_p_adjusted" not in st:
        return "-"
    return f"{st['mcnemar_p_adjusted']:.3g}" + ("" if st.get("adjustment", "none") == "none" else f" ({st['adjustment']})")


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _delta(st: dict | None) -> str:
    if not st:
        return "-"
    return f"{st['delta_accuracy'] * 100:+.2f} pts [{st['delta_ci95_low'] * 100:+.2f}, {st['delta_ci95_high'] * 100:+.2f}]"


def table1(rows: list[dict], unit: str, baseline: str = "fp32") -> str:
    """The report's Table 1 layout: one column per variant, one row per metric."""
    half = next((r["half_baseline"] for r in rows if r.get("half_baseline")), None)
    spec = [
        ("Accuracy", lambda r: f"{r['accuracy']:.4f}"), ("Precision (macro)", lambda r: f"{r['precision']:.4f}"),
        ("Recall (macro)", lambda r: f"{r['recall']:.4f}"), ("F1-Score (macro)", lambda r: f"{r['f1']:.4f}"),
        (f"Size on disk ({unit})", lambda r: f"{r['size']:.2f}"), (f"Memory footprint ({unit})", lambda r: f"{r['memory']:.2f}"),
        ("Compression", lambda r: f"{r['compression']:.2f}x"),
        ("Inference median (ms)", lambda r: _ms(r["latency_ms"])), ("Inference p95 (ms)", lambda r: _ms(r["latency_p95_ms"])),
        ("Inference IQR (ms)", lambda r: _ms(r["latency_iqr_ms"])),
        (f"Speedup vs {baseline} [95% CI]", speed_text), ("Speed", lambda r: r["speed_verdict"]),
        (f"Speedup vs {half or 'half precision'} [95% CI]", lambda r: speed_text(r, "_vs_half")),
        ("torch.compile mode", lambda r: str(r["compile"])),
        ("First call (ms; includes compilation)", lambda r: f"{r['first_call_ms']:.1f}" if r["first_call_ms"] is not None else "-"),
    ]
    lines = ["| Metric | " + " | ".join(r["variant"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for label, fmt in spec:
        lines.append(f"| {label} | " + " | ".join(fmt(r) for r in rows) + " |")
    if all("stats" in r for r in rows):
        lines.append("| Accuracy Δ vs baseline [95% CI] | " + " | ".join(_delta(r["stats"]) for r in rows) + " |")
        lines.append("| Agreement with baseline | " + " | ".join(f"{r['stats']['agreement']:.4f}" for r in rows) + " |")
        lines.append("| McNemar exact p | " + " | ".join(f"{r['stats']['mcnemar_p']:.3g}" for r in rows) + " |")
        method = rows[0]["stats"].get("adjustment", "none")
        lines.append(f"| McNemar p, {ADJUSTMENT_NAMES[method]}-adjusted | "
                     + " | ".join(_p_adjusted(r["stats"]).split(" (")[0] for r in rows) + " |")
        lines.append("| Verdict | " + " | ".join(r["stats"]["verdict"] for r in rows) + " |")
    return "\n".join(lines)


def per_class_table(m: dict) -> str:
    lines = ["| Class | Accuracy | Precision | Recall | F1-Score | Support |", "|---|---|---|---|---|---|"]
    for name, c in m["per_class"].items():
        lines.append(f"| {name} | {c['accuracy']:.4f} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    return "\n".join(lines)


def render_markdown(
    details: dict[str, dict], rows: list[dict], params: ReportParams, figures: list[str], bench: dict,
    rec: dict | None = None, skipped: dict[str, str] | None = None, sensitivity_figures: dict[str, str] | None = None,
    variant_set: str | None = None, model: dict | None = None,
) -> str:
    base = details[params.baseline]
    env, proto = bench["environment"], bench["protocol"]
    half = next((r["half_baseline"] for r in rows if r.get("half_baseline")), None)
    unit_note = "MiB = 2^20 bytes" if params.size_unit == "MiB" else "MB = 10^6 bytes"
    half_note = (f"`{half}` (report.half_baseline: auto = the faster half-precision cast on this machine)"
                 if params.half_baseline == "auto" else f"`{half}`") if half else "none (no half-precision variant timed)"
    alone = [n for n, r in bench["variants"].items() if r.get("timed", "").startswith("alone")]
    out = [
        "# Post-training quantization report" + (f" (variant set: {variant_set})" if variant_set else ""),
        "",
        f"Measured {bench.get('date') or '(date not recorded)'}.",
        *([model_line(model)] if model else []),
        f"Test rows: {base['test_rows']}. Device: {env['device_name']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, bitsandbytes {env['bitsandbytes']}, onnxruntime {env.get('onnxruntime')}, openvino "
        f"{env.get('openvino')}, nncf {env.get('nncf')}. Benchmark date: {bench['date']}.",
        f"Speed: every variant loaded in one process and timed interleaved (`benchmark` stage): {proto['rounds']} rounds, "
        f"each visiting every variant once in a fresh seeded random order; a visit = {proto['warmup']} warm-up + "
        f"{proto['iters']} timed passes of one batch of {proto['batch_sizes'][0]} x {proto['seq_len']} tokens (padded); "
        f"{proto['timer']}, {proto['threads']} threads. Median, p95 and IQR over all timed passes. Speedup = median over "
        f"rounds of the paired ratio `{params.baseline}` / variant, [bootstrap 95% interval over rounds]; called "
        f"faster or slower only when the interval excludes 1 and the difference exceeds {params.speed_equivalence:.0%} "
        "(`report.speed_equivalence`), else \"no measurable difference\".",
        f"Half-precision baseline: {half_note}.",
        *([f"Timed alone beside `{params.baseline}` (did not fit beside the others): {', '.join(alone)}."] if alone else []),
        f"Sizes: weight files on disk ({unit_note}); memory footprint = parameters + buffers as loaded. "
        f"Compression and speedup are against `{params.baseline}`.",
        "",
        "## Table 1: comparison of all variants",
        "",
        table1(rows, params.size_unit, params.baseline),
        "",
        f"Statistics against `{params.baseline}` on the same test examples: accuracy difference with a paired "
        f"bootstrap 95% interval ({params.bootstrap_resamples} resamples, seed {params.seed}), agreement (share of "
        f"identical predictions) and McNemar's exact test on the discordant pairs. {multiplicity_rule(params, rows)}",
        "",
        "Run-time precision of each variant:",
        "",
        *[f"- `{r['variant']}` ({r['scheme']}): {r['runtime_dtype']}" + _mac_share(details[r["variant"]]) for r in rows],
        "",
        *outlier_lines(details),
    ]
    others = _other_batch_sizes(rows, bench, params)
    if others:
        out += ["## Speed at other batch sizes", "", others, ""]
    out += sensitivity_section(details, sensitivity_figures or {})
    if skipped:
        out += ["## Variants not run on this machine", "",
                *[f"- `{name}`: {why}" for name, why in skipped.items()], ""]
    if rec:
        out += ["## Recommendation", "",
                f"Acceptable: accuracy drop against `{params.baseline}` not significant (adjusted McNemar p >= {params.alpha}) or at most "
                f"{params.max_accuracy_drop * 100:.2f} points (`report.max_accuracy_drop`). Speed is the interleaved "
                "benchmark's, on this machine; a variant with no measurable difference counts as equal in speed to "
                f"`{params.baseline}`; compilation time is not included.", "",
                recommendation_markdown(rec, rows, params), "", "![pareto](" + next(f for f in figures if "pareto" in f) + ")", ""]
    for i, (name, m) in enumerate(details.items(), start=2):
        out += [f"## Table {i}: per-class metrics, {name}", "", per_class_table(m), ""]
    out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(out)


def model_line(train: dict) -> str:
    """The report's sentence on where the model came from (reports/train.json): used as given, or trained here."""
    if train.get("trained") is False:
        return (f"Model: {train['how']} ({train['source']}): validation accuracy {train['val_accuracy']:.4f} on "
                f"{train['validation_rows']} rows; its classes matched to the data's as "
                + ", ".join(f"{m} = {d}" for m, d in train["label_mapping"].items()) + ".")
    return (f"Model: fine-tuned here ({train.get('train_rows', '?')} training rows, {len(train.get('epochs', []))} epoch(s), "
            f"validation accuracy {train['val_accuracy']:.4f}).") if "val_accuracy" in train else ""


def _mac_share(m: dict) -> str:
    share = (m.get("quantization") or {}).get("mac_share_8bit")
    return f" ({share:.1%} of the projections' multiply-accumulates in its integer GEMMs)" if share is not None else ""


def outlier_lines(details: dict[str, dict], top: int = 5) -> list[str]:
    """Where the activation outliers are: for each variant that calibrated static activation scales, the
    projections whose calibrated input range max |x| is largest (one outlier channel sets a per-tensor scale
    for every channel of that tensor), against the median range of all its projections."""
    import statistics

    out = []
    for name, m in details.items():
        ranges = (m.get("quantization") or {}).get("input_absmax") or {}
        if not ranges:
            continue
        median = statistics.median(ranges.values())
        worst = sorted(ranges.items(), key=lambda kv: -kv[1])[:top]
        out.append(f"- `{name}`: largest calibrated input ranges max|x| (median of its {len(ranges)} projections "
                   f"{median:.3g}): " + ", ".join(f"`{n}` {v:.3g} ({v / median:.1f}x)" for n, v in worst))
    return ["Activation ranges of the statically calibrated variants (where the outlier dimensions are):", "", *out, ""] if out else []


def sensitivity_section(details: dict[str, dict], figures: dict[str, str], top: int = 8) -> list[str]:
    """Per variant that scored its projections (sensitivity.py): the most sensitive ones, the heatmap, and the
    budgeted search's outcome (what stayed in float, the share of MACs still in 8 bits)."""
    out = []
    for name, m in details.items():
        q = m.get("quantization") or {}
        sens = (q.get("sensitivity") or {}).get("by_projection")
        if not sens:
            continue
        rows = sorted(sens.items(), key=lambda kv: -kv[1]["kl"])[:top]
        out += [f"### `{name}`", "",
                f"Each projection quantized alone, everything else in float, on the first {q['sensitivity']['rows']} "
                f"validation rows (never test rows); ranked by KL(float || quantized) of the logits.", "",
                "| projection | layer | KL | NMSE of logits | Δacc (validation) |", "|---|---|---|---|---|",
                *[f"| `{p}` | {v['layer']} | {v['kl']:.3g} | {v['nmse']:.3g} | {v['delta_accuracy'] * 100:+.2f} pts |" for p, v in rows], ""]
        budget = q.get("budget")
        if budget:
            tried = ", ".join(_tried(t) for t in budget["tried"])
            bound = (f", its one-sided {budget['confidence']:.0%} bound {budget['validation_drop_bound'] * 100:.2f}"
                     if "validation_drop_bound" in budget else "")
            where = (f"{len(budget['fallback'])} raised to {budget['ladder'][1]} "
                     f"({', '.join(f'`{k}`' for k in budget['fallback']) or 'none'}), {len(budget['float'])} to float "
                     f"({', '.join(f'`{k}`' for k in budget['float']) or 'none'})" if budget.get("fallback") is not None and
                     len(budget.get("ladder", [])) > 2 else
                     f"{budget['k']} projection(s) kept in float ({', '.join(f'`{k}`' for k in budget['kept']) or 'none'})")
            out += [f"Budgeted search (`budget: auto`, max drop {budget['max_drop'] * 100:.2f} points on {budget['rows']} "
                    f"validation rows): {where}, validation drop "
                    f"{budget['validation_drop'] * 100:.2f} points{bound}; {q.get('mac_share_8bit', 0):.1%} of the body's "
                    f"projection multiply-accumulates run in low bits. Drops measured (points): {tried}.", ""]
            out += _formats_table(q.get("formats"))
        if name in figures:
            out += [f"![sensitivity {name}]({figures[name]})", ""]
    searches = budget_rows(details)
    if searches:
        out += ["### Accuracy-budgeted searches side by side", "",
                "Each keeps the operations that cost the most validation accuracy in float until the validation drop is "
                "within its budget; the test set then judges the result in Table 1.", "",
                "| variant | method | budget (points) | validation rows | kept in float | MACs in low bits | search time (s) |",
                "|---|---|---|---|---|---|---|", *searches, ""]
    return (["## Sensitivity: which projections quantization hurts", "", *out]) if out else []


def _count(record: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in record.get("count", {}).items() if v)


def _tried(t: dict) -> str:
    """One measured configuration of a budgeted search: how many were raised (from which format), drop, bound."""
    what = f"{t['raised']} raised from {t['rung']}" if "raised" in t else f"{t['kept']} kept"
    return f"{what}: {t['drop'] * 100:+.2f}" + (f" (bound {t['bound'] * 100:+.2f})" if "bound" in t else "")


def _formats_table(formats: dict | None) -> list[str]:
    """Per format a search ended with: projections, share of the body's multiply-accumulates, weight bytes."""
    if not formats:
        return []
    return ["| format | projections | MACs | weight bytes |", "|---|---|---|---|",
            *[f"| {fmt} | {f['projections']} | {f.get('mac_share', 0):.1%} | {f.get('weight_bytes', f.get('bytes', 0)):,} |"
              for fmt, f in formats.items()], ""]


def budget_rows(details: dict[str, dict]) -> list[str]:
    """One table row per variant that searched for an accuracy budget: ptqflow's `budget: auto` (int8_static), its
    size search (`embeddings: auto`, bnb_nf4) and NNCF's accuracy control (ov_int8_accuracy_control)."""
    rows = []
    for name, m in details.items():
        q = m.get("quantization") or {}
        if q.get("budget"):
            b = q["budget"]
            kept = (f"{len(b['float'])} (W8A8: {len(b['fallback'])})" if b.get("fallback") and "float" in b else str(len(b["kept"])))
            rows.append(f"| `{name}` | ptqflow `budget: auto` ({b.get('confidence', 0.5):.0%} one-sided bound) | "
                        f"{b['max_drop'] * 100:.2f} | {b['rows']} | {kept} | {q.get('mac_share_8bit', 0):.1%} | "
                        f"{b.get('seconds', '-')} |")
        elif q.get("size_search"):
            z = q["size_search"]
            chosen = ", ".join(f"{k} x{v['projections']}" for k, v in (q.get("formats") or {}).items())
            also = "; ".join(f"{m}: {_count(r)}" for m, r in z["by_method"].items())
            rows.append(f"| `{name}` | ptqflow size search: projections on the ladder {' -> '.join(z['ladder'])} ({also}); "
                        f"kept **{z['method']}**, embeddings {q.get('embeddings', 'keep')} | {z['by_method'][z['method']]['max_drop'] * 100:.2f} | "
                        f"{z['by_method'][z['method']]['rows']} | {chosen} | - | {q.get('quantize_seconds', '-')} |")
        elif q.get("embedding_search"):
            e = q["embedding_search"]
            tries = ", ".join(f"{t['candidate']} {t['drop'] * 100:+.2f} (bound {t['bound'] * 100:+.2f})" for t in e["tried"])
            rows.append(f"| `{name}` | ptqflow size search: embedding tables at the fewest bits that fit ({tries}): "
                        f"**{e['chosen'] or 'none, tables float'}** | {e['max_drop'] * 100:.2f} | {e['rows']} | tables at "
                        f"{e['chosen'] or 'float'} | - | {e.get('seconds', '-')} |")
        elif q.get("accuracy_control"):
            a = q["accuracy_control"]
            rows.append(f"| `{name}` | NNCF `quantize_with_accuracy_control` (point estimate) | {a['max_drop'] * 100:.2f} | "
                        f"{a['validation_rows']} | {len(a['reverted_to_float'])} | {q.get('mac_share_8bit', 0):.1%} | "
                        f"{q.get('search_seconds', '-')} |")
    return rows


def multiplicity_rule(params: ReportParams, rows: list[dict]) -> str:
    """The report's sentence on how the verdicts of many variants against one baseline are kept honest."""
    m = sum(1 for r in rows if r["variant"] != params.baseline)
    method = params.multiple_comparisons
    if method == "none":
        return (f"\"Significant change\" means p < {params.alpha}, each variant on its own (report.multiple_comparisons: none): "
                f"with {m} variants, about {m * params.alpha:.1f} such calls are expected by chance alone.")
    what = ("the family-wise error rate (the chance of any false call)" if method == "holm"
            else "the false discovery rate (the expected share of false calls among the significant ones)")
    level = next((r["speed_verdict_level"] for r in rows if r.get("speed_verdict_level")), None)
    speed = (f" Speed verdicts likewise use simultaneous intervals (Bonferroni, {level:.2%} each) of the {m} variants; "
             "the bracketed interval shown is the plain 95% one." if level else "")
    return (f"The {m} variants are one family of comparisons against `{params.baseline}`: their p-values are adjusted by "
            f"{ADJUSTMENT_NAMES[method]} (report.multiple_comparisons: {method}), which keeps {what} at {params.alpha}; "
            f"\"significant change\" means adjusted p < {params.alpha}.{speed}")


def _other_batch_sizes(rows: list[dict], bench: dict, params: ReportParams) -> str:
    from .benchmark import latency_at, speeds_against

    sizes = bench["protocol"]["batch_sizes"][1:]
    if not sizes:
        return ""
    lines = [f"| variant | batch | median (ms) | p95 (ms) | speedup vs {params.baseline} [95% CI] | speed |", "|---|---|---|---|---|---|"]
    for bs in sizes:
        speed = speeds_against(bench, params.baseline, bs, params.bootstrap_resamples, params.seed, params.speed_equivalence,
                               params.alpha, params.multiple_comparisons)
        for r in rows:
            lat = latency_at(bench["variants"].get(r["variant"], {}), bs)
            sp = speed.get(r["variant"])
            if lat:
                lines.append(f"| {r['variant']} | {bs} | {lat['median_ms']:.2f} | {lat['p95_ms']:.2f} | "
                             f"{speed_text(sp) if sp else '-'} | {sp['speed_verdict'] if sp else '-'} |")
    return "\n".join(lines)


def metrics_record(row: dict, unit: str) -> dict:
    """The dozen numbers of one variant that `dvc metrics show` / `dvc metrics diff` compare between runs."""
    st = row.get("stats") or {}
    lo, hi = row["speedup_ci95"] or (None, None)
    out = {
        "accuracy": round(row["accuracy"], 6),
        "f1_macro": round(row["f1"], 6),
        "delta_accuracy": st.get("delta_accuracy"),
        "delta_ci95_low": st.get("delta_ci95_low"),
        "delta_ci95_high": st.get("delta_ci95_high"),
        "mcnemar_p": st.get("mcnemar_p"),
        "mcnemar_p_adjusted": st.get("mcnemar_p_adjusted"),
        f"size_{unit.lower()}": round(row["size"], 4),
        "compression": round(row["compression"], 4),
        "latency_median_ms": row["latency_ms"],
        "latency_p95_ms": row["latency_p95_ms"],
        "speedup": row["speedup"],
        "speedup_ci95_low": lo,
        "speedup_ci95_high": hi,
    }
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items() if v is not None}


def pareto_csv(rows: list[dict], rec: dict) -> str:
    """plots/pareto.csv: one line per variant, the data of the DVC accuracy-vs-latency and -size plots."""
    import pandas as pd

    front = set(rec["pareto_front"])
    return pd.DataFrame([{
        "variant": r["variant"], "accuracy": r["accuracy"], "latency_ms": r["latency_ms"],
        "size_MiB": round(r["size_bytes"] / 2**20, 4), "size_MB": round(r["size_bytes"] / 1e6, 4),
        "speedup": r["speedup"], "acceptable": rec["verdicts"][r["variant"]]["acceptable"], "pareto": r["variant"] in front,
    } for r in rows]).to_csv(index=False)


def build_report(
    variants: list[str],
    details_dir: str | Path,
    predictions_dir: str | Path,
    bench_path: str | Path,
    params: ReportParams,
    report_path: str | Path,
    figures_dir: str | Path,
    comparison_path: str | Path,
    metrics_dir: str | Path,
    pareto_path: str | Path,
    variant_set: str | None = None,
    train_path: str | Path | None = None,
) -> list[dict]:
    """Write the markdown report, the figures, metrics/comparison.json, metrics/eval/ and plots/pareto.csv.
    `train_path` (reports/train.json): where the model came from, said in the report's header."""
    details, skipped = split_skipped(collect(variants, details_dir))
    if params.baseline in skipped:
        raise PtqflowError(f"report.baseline {params.baseline!r} was skipped on this machine: {skipped[params.baseline]}")
    bench_path = Path(bench_path)
    if not bench_path.is_file():
        raise PtqflowError(f"{bench_path}: missing (run: dvc repro benchmark)")
    bench = read_json(bench_path)
    if "latency" not in bench["variants"].get(params.baseline, {}):
        raise PtqflowError(f"{bench_path}: the baseline {params.baseline!r} was not timed (run: dvc repro benchmark)")
    rows = summary_rows(details, params, bench, compare_all(list(details), predictions_dir, params))
    rec = recommend(rows, params)
    write_json(comparison_path, {
        "baseline": params.baseline,
        "half_baseline": rows[0]["half_baseline"],
        "batch_size": bench["protocol"]["batch_sizes"][0],
        "speed_equivalence": params.speed_equivalence,
        "multiple_comparisons": {"method": params.multiple_comparisons, "alpha": params.alpha,
                                 "family_size": sum(1 for r in rows if r["variant"] != params.baseline),
                                 "rule": multiplicity_rule(params, rows)},
        "device": bench["environment"]["device_name"],
        "measured": {"date": bench.get("date"), "device": bench["environment"]["device_name"],
                     "versions": {k: bench["environment"].get(k) for k in ("torch", "transformers", "onnxruntime", "openvino")}},
        "variant_set": variant_set,
        "variants": {r["variant"]: r for r in rows},
        "recommendation": rec,
        "skipped": skipped,
    })
    with atomic_dir(metrics_dir) as tmp:
        for r in rows:
            write_json(tmp / f"{r['variant']}.json", metrics_record(r, params.size_unit))
    write_text(pareto_path, pareto_csv(rows, rec))
    names = [f"confusion_{name}.png" for name in details] + list(FIGURES)
    with atomic_dir(figures_dir) as tmp:
        for name, m in details.items():
            plot_confusion(m, tmp / f"confusion_{name}.png")
        plot_metrics(rows, tmp / FIGURES[0])
        plot_size_latency(rows, params, tmp / FIGURES[1])
        plot_pareto(rows, rec, params, tmp / FIGURES[2])
        scored = [n for n, m in details.items() if ((m.get("quantization") or {}).get("sensitivity") or {}).get("by_projection")]
        if scored:
            from .sensitivity import heatmap

            for name in scored:
                heatmap(details[name]["quantization"]["sensitivity"]["by_projection"], tmp / f"sensitivity_{name}.png",
                        f"{name}: one projection quantized at a time (validation rows)")
    links = [os.path.relpath(Path(figures_dir) / n, Path(report_path).parent) for n in names]
    sens_links = {n: os.path.relpath(Path(figures_dir) / f"sensitivity_{n}.png", Path(report_path).parent) for n in scored}
    model = read_json(train_path) if train_path and Path(train_path).is_file() else None
    write_text(report_path, render_markdown(details, rows, params, links, bench, rec, skipped, sens_links, variant_set, model))
    return rows


