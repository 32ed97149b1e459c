"""The report: what comparison.py computed, as markdown (reports/report.md), figures (plots/figures/), and the
files DVC reads (metrics/comparison.json: every number; metrics/eval/<variant>.json: the dozen numbers `dvc metrics
show/diff` compare; plots/pareto.csv: the data of the `dvc plots` accuracy-vs-latency and -size views).

Speed is reported per traffic profile (config.ProfileParams): one column of Table 1 per profile, a section with
every profile's latencies and throughput, and a recommendation per profile, with one sentence where they
disagree. The sections on the calibrating and searching schemes are sensitivity_report.py's.
"""

from __future__ import annotations

import os
from pathlib import Path

from .benchmark import speed_text
from .comparison import ADJUSTMENT_NAMES, compare, metrics_record, multiplicity_rule, pareto_csv
from .config import ReportParams
from .figures import plot_confusion, plot_metrics, plot_pareto, plot_profiles, plot_size_latency
from .io import atomic_dir, read_json, write_json, write_text
from .sensitivity_report import outlier_lines, sensitivity_section

FIGURES = ("metrics_comparison.png", "size_latency.png", "pareto.png", "profiles.png")


def profile_text(name: str, info: dict) -> str:
    """One sentence on how a traffic profile calls the model (the benchmark's protocol record of it)."""
    calls = "one row per call" if info["batch_size"] == 1 else f"calls of {info['batch_size']} rows"
    order = {"random": "in a seeded random order",
             "by_length": "length-bucketed (each call a run of length-neighbours from the sorted test split, calls drawn with a seed)"}[info["order"]]
    pad = (f"padded to {info['max_length']} tokens" if info["padding"] == "fixed" else
           "no padding" if info["batch_size"] == 1 else "each call padded to its longest row")
    judged = "rows per second" if info["statistic"] == "throughput" else "the latency of a call (p50 / p95 / p99)"
    return (f"`{name}`: {calls}, {info['rows']} test rows {order} (median {info['tokens_median']:.0f} tokens, p95 "
            f"{info['tokens_p95']:.0f}), {pad} ({info['padding_share']:.0%} of the positions computed are padding), "
            f"{info['passes']} timed pass(es) per visit; judged by {judged}")


def figure_text(p: dict) -> str:
    """A profile's own speed figure: rows per second (throughput) or the median call (latency)."""
    if p["statistic"] == "throughput":
        return f"{p['rows_per_s']:.0f} rows/s" if p.get("rows_per_s") is not None else "-"
    return f"{p['median_ms']:.2f} ms" if p.get("median_ms") is not None else "-"


VERDICT_MARKS = {"slower": " slower", "no measurable difference": " same", "not timed": " not timed"}


def speed_cell(p: dict | None) -> str:
    """Table 1's cell for one profile: its figure, the speedup against the baseline [95% CI], a word unless faster."""
    if not p or p.get("median_ms") is None:
        return "-"
    return f"{figure_text(p)}, {speed_text(p)}{VERDICT_MARKS.get(p['speed_verdict'], '')}"


def recommendation_markdown(rec: dict, rows: list[dict], params: ReportParams) -> str:
    by = {r["variant"]: r for r in rows}

    def line(name: str, profile: str | None = None) -> str:
        r = by[name]
        p = r["profiles"][profile] if profile else r
        speed = (f"{figure_text(p)} ({'p99 ' + format(p['p99_ms'], '.2f') + ' ms, ' if p.get('p99_ms') is not None else ''}"
                 if profile else (f"{r['latency_ms']:.2f} ms median, " if r["latency_ms"] is not None else "not timed, "))
        return (f"`{name}`: {r['size']:.2f} {params.size_unit} ({r['compression']:.2f}x smaller than `{params.baseline}`), "
                f"{speed}speed vs `{params.baseline}` {speed_text(p)}" + (")" if profile else "")
                + f": {p['speed_verdict']}; accuracy {r['accuracy']:.4f}; {rec['verdicts'][name]['why']}")

    out = [f"- Smallest acceptable variant: {line(rec['smallest'])}."]
    by_profile = rec.get("fastest_by_profile") or {}
    for profile, name in by_profile.items():
        note = "" if rec["measurably_faster_by_profile"][profile] else (
            f" No acceptable variant is measurably faster than `{params.baseline}` here; among those equal in speed, the "
            "smallest is named.")
        out.append(f"- Fastest acceptable for `{profile}`: {line(name, profile)}.{note}")
    if not by_profile:
        out.append(f"- Fastest acceptable variant: {line(rec['fastest'])}.")
    if len(set(by_profile.values())) > 1:
        winners: dict[str, list[str]] = {}
        for profile, name in by_profile.items():
            winners.setdefault(name, []).append(f"`{profile}`")
        out.append("- The profiles disagree: " + "; ".join(f"`{n}` is fastest for {', '.join(p)}" for n, p in winners.items())
                   + ". Ship for the traffic you serve (`package.variant: fastest:<profile>`).")
    elif len(by_profile) > 1:
        out.append(f"- Every traffic profile names `{rec['fastest']}` fastest.")
    out += [
        f"- Pareto front (accuracy, size, speed on `{rec.get('primary_profile') or 'the benchmark'}`): "
        f"{', '.join(f'`{n}`' for n in rec['pareto_front'])}.",
        "",
        "| variant | acceptable | why |",
        "|---|---|---|",
        *[f"| {n} | {'yes' if v['acceptable'] else 'no'} | {v['why']} |" for n, v in rec["verdicts"].items()],
    ]
    return "\n".join(out)


def format_table(rows: list[dict], unit: str, baseline: str = "fp32") -> str:
    """The comparison as a markdown table, one row per variant (what `make run` prints): accuracy and its change,
    size, and one speed column per traffic profile (its figure, speedup vs the baseline [95% CI])."""
    profiles = rows[0].get("profiles") or {}
    head = ["variant", "accuracy", "Δacc [95% CI]", "McNemar p", "p adjusted", "macro F1", f"size ({unit})", "compression"]
    head += [f"{k}: {'rows/s' if p['statistic'] == 'throughput' else 'p50'}, vs {baseline} [95% CI]" for k, p in profiles.items()]
    if not profiles:  # a comparison written before traffic profiles
        head += ["median (ms)", f"speedup vs {baseline} [95% CI]", "speed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        st = r.get("stats")
        cells = [r["variant"], f"{r['accuracy']:.4f}", _delta(st), f"{st['mcnemar_p']:.3g}" if st else "-", _p_adjusted(st),
                 f"{r['f1']:.4f}", f"{r['size']:.2f}", f"{r['compression']:.2f}x"]
        cells += [speed_cell((r.get("profiles") or {}).get(k)) for k in profiles]
        if not profiles:
            cells += [_ms(r["latency_ms"]), speed_text(r), r["speed_verdict"]]
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
    """The report's Table 1 layout: one column per variant, one row per metric (per traffic profile: latencies,
    rows per second, speedups)."""
    half = next((r["half_baseline"] for r in rows if r.get("half_baseline")), None)
    spec = [
        ("Accuracy", lambda r: f"{r['accuracy']:.4f}"), ("Precision (macro)", lambda r: f"{r['precision']:.4f}"),
        ("Recall (macro)", lambda r: f"{r['recall']:.4f}"), ("F1-Score (macro)", lambda r: f"{r['f1']:.4f}"),
        (f"Size on disk ({unit})", lambda r: f"{r['size']:.2f}"), (f"Memory footprint ({unit})", lambda r: f"{r['memory']:.2f}"),
        ("Compression", lambda r: f"{r['compression']:.2f}x"),
    ]
    for k in rows[0].get("profiles") or {}:
        def get(r, k=k):
            return r["profiles"][k]

        spec += [
            (f"`{k}`: call p50 / p95 / p99 (ms)", lambda r, g=get: " / ".join(_ms(g(r)[x]) for x in ("median_ms", "p95_ms", "p99_ms"))),
            (f"`{k}`: rows per second", lambda r, g=get: f"{g(r)['rows_per_s']:.1f}" if g(r)["rows_per_s"] is not None else "-"),
            (f"`{k}`: speedup vs {baseline} [95% CI]", lambda r, g=get: speed_text(g(r))),
            (f"`{k}`: speed", lambda r, g=get: g(r)["speed_verdict"]),
            (f"`{k}`: speedup vs {half or 'half precision'} [95% CI]", lambda r, g=get: speed_text(g(r), "_vs_half")),
        ]
    spec += [
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


def profiles_section(rows: list[dict], rec: dict, bench: dict, params: ReportParams) -> list[str]:
    """Every traffic profile side by side: how it calls the model, who wins it and by how much, and each variant's
    latencies, rows per second and speedup on it."""
    infos = bench["protocol"].get("profiles") or {}
    if not infos:
        return []
    by = {r["variant"]: r for r in rows}
    out = ["## Speed per traffic profile", "", *[f"- {profile_text(k, v)}." for k, v in infos.items()], "",
           f"| profile | fastest acceptable | its speed | vs `{params.baseline}` [95% CI] | runner-up (acceptable) | vs `{params.baseline}` |",
           "|---|---|---|---|---|---|"]
    ok = set(rec["acceptable"])
    for k in infos:
        ranked = sorted((r for r in rows if r["variant"] in ok and r["profiles"][k]["speedup"] is not None),
                        key=lambda r: -r["profiles"][k]["speedup"])
        win = by[rec["fastest_by_profile"][k]]["profiles"][k]
        second = next((r for r in ranked if r["variant"] != rec["fastest_by_profile"][k]), None)
        out.append(f"| `{k}` | `{rec['fastest_by_profile'][k]}` | {figure_text(win)} | {speed_text(win)} | "
                   + (f"`{second['variant']}` | {speed_text(second['profiles'][k])} |" if second else "- | - |"))
    out += ["", f"| variant | profile | call p50 (ms) | p95 (ms) | p99 (ms) | rows/s | speedup vs {params.baseline} [95% CI] | speed |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for k, p in r["profiles"].items():
            out.append(f"| {r['variant']} | {k} | {_ms(p['median_ms'])} | {_ms(p['p95_ms'])} | {_ms(p['p99_ms'])} | "
                       f"{p['rows_per_s'] if p['rows_per_s'] is not None else '-'} | {speed_text(p)} | {p['speed_verdict']} |")
    return [*out, ""]


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
    infos = proto.get("profiles") or {}
    what = (f"on {len(infos)} traffic profile(s) of real test rows ({', '.join(f'`{k}`' for k in infos)}: Speed per traffic "
            f"profile below)" if infos else f"on one batch of {proto['batch_sizes'][0]} x {proto['seq_len']} tokens")
    out = [
        "# Post-training quantization report" + (f" (variant set: {variant_set})" if variant_set else ""),
        "",
        f"Measured {bench.get('date') or '(date not recorded)'}.",
        *([model_line(model)] if model else []),
        f"Test rows: {base['test_rows']}. Device: {env['device_name']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, bitsandbytes {env['bitsandbytes']}, onnxruntime {env.get('onnxruntime')}, openvino "
        f"{env.get('openvino')}, nncf {env.get('nncf')}. Benchmark date: {bench['date']}.",
        f"Speed: every variant loaded in one process and timed interleaved (`benchmark` stage) {what}: {proto['rounds']} "
        f"rounds, each visiting every variant once in a fresh seeded random order; a visit = {proto['warmup']} warm-up "
        f"call(s) and the timed passes of each profile, every call timed; {proto['timer']}, {proto['threads']} threads. "
        f"Speedup = median over rounds of the paired ratio `{params.baseline}` / variant (per-round median call, or "
        f"per-round total for a throughput profile), [bootstrap 95% interval over rounds]; called faster or slower only "
        f"when the interval excludes 1 and the difference exceeds {params.speed_equivalence:.0%} "
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
    if rec:
        out += profiles_section(rows, rec, bench, params)
    out += sensitivity_section(details, sensitivity_figures or {})
    if skipped:
        out += ["## Variants not run on this machine", "",
                *[f"- `{name}`: {why}" for name, why in skipped.items()], ""]
    if rec:
        out += ["## Recommendation", "",
                f"Acceptable: accuracy drop against `{params.baseline}` not significant (adjusted McNemar p >= {params.alpha}) or at most "
                f"{params.max_accuracy_drop * 100:.2f} points (`report.max_accuracy_drop`). Speed is the interleaved "
                "benchmark's, on this machine, per traffic profile; a variant with no measurable difference counts as "
                f"equal in speed to `{params.baseline}`; compilation time is not included.", "",
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
    details, skipped, bench, rows, rec = compare(variants, details_dir, predictions_dir, bench_path, params)
    write_json(comparison_path, {
        "baseline": params.baseline,
        "half_baseline": rows[0]["half_baseline"],
        "primary_profile": rows[0]["primary_profile"],
        "profiles": bench["protocol"].get("profiles"),
        "batch_size": (bench["protocol"].get("profiles") or {}).get(rows[0]["primary_profile"], {}).get("batch_size"),
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
        plot_profiles(rows, rec, params, tmp / FIGURES[3])
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
