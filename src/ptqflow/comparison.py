"""What the numbers say: every variant's scores (evaluate@), timings (benchmark) and statistics as rows, whether
each is acceptable, and the recommendation per traffic profile. report.py writes them as markdown.

Compression = size_on_disk(baseline) / size_on_disk(variant). Speed comes from the `benchmark` stage, where
every variant was timed interleaved in one process on each traffic profile (config.ProfileParams: one text at a
time at its real length, batches of real rows, the fixed 16 x 128 batch): speedup = the median over rounds of the
paired ratio baseline / variant (per-round median call for a latency profile, per-round total for a throughput
profile), with a bootstrap 95% interval over rounds (stats.py). A variant is called faster or slower only when
that interval excludes 1 (and the difference exceeds `report.speed_equivalence`); otherwise "no measurable
difference", and it counts as equal in speed to the baseline (effective speedup 1.0) in the recommendation and
the Pareto front. `report.half_baseline: auto` takes the faster of the half-precision casts (scheme `cast`, not
compiled) on the measuring machine. Sizes are shown in `report.size_unit` (MiB = 2**20 bytes unless set to MB).

The recommendation is computed from these numbers, nothing about it is fixed in code. A variant is
*acceptable* when its accuracy drop against the baseline is not significant (McNemar p, adjusted for the number
of variants (report.multiple_comparisons), >= alpha) or is at most `report.max_accuracy_drop` (a fraction: 0.005
= 0.5 points). Among the acceptable variants (the baseline included) the report names the smallest on disk (ties:
the faster on the first profile) and, per traffic profile, the fastest by effective speedup (ties: the smaller);
`fastest` alone means the first profile's. Variant A dominates B when A is at least as accurate, as small and as
fast (effective speedup on the first profile), and strictly better in one of them; the Pareto front is the set of
variants no other variant dominates. Variants that could not run on this machine (`skipped`) are listed apart,
with the reason.
"""

from __future__ import annotations

from pathlib import Path

from .benchmark import latency_at, speeds_against
from .config import ReportParams
from .errors import PtqflowError
from .io import read_json
from .pareto import pareto_front, speed_cost

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



def workloads(bench: dict) -> list:
    """The profiles (or batch sizes) the benchmark timed, the first being the one single-speed figures use."""
    proto = bench["protocol"]
    return list(proto.get("workloads") or proto["batch_sizes"])


def profile_speed(record: dict, key, sp: dict | None, sh: dict | None, is_baseline: bool) -> dict:
    """One variant's numbers on one profile: its call latencies, rows per second, the paired speedups (against the
    baseline and the half-precision baseline) with their intervals, verdicts and the effective speedup."""
    from .stats import SAME

    lat = latency_at(record, key) or {}
    return {
        "statistic": "throughput" if lat.get("paired_on") == "round_totals_ms" else "latency",
        "batch_size": lat.get("batch_size"),
        "median_ms": lat.get("median_ms"),
        "p95_ms": lat.get("p95_ms"),
        "p99_ms": lat.get("p99_ms"),
        "iqr_ms": lat.get("iqr_ms"),
        "rows_per_s": lat.get("rows_per_s"),
        "first_call_ms": record.get("first_call_ms", {}).get(str(key)),
        "speedup": sp["speedup"] if sp else None,
        "speedup_ci95": sp["speedup_ci95"] if sp else None,
        "speed_verdict": ("baseline" if is_baseline else sp["speed_verdict"]) if sp else "not timed",
        "speedup_ci_verdict": sp["speedup_ci_verdict"] if sp else None,
        "speed_verdict_level": sp["verdict_level"] if sp else None,
        "effective_speedup": (1.0 if sp["speed_verdict"] == SAME or is_baseline else sp["speedup"]) if sp else None,
        "speedup_vs_half": sh["speedup"] if sh else None,
        "speedup_vs_half_ci95": sh["speedup_ci95"] if sh else None,
        "speed_verdict_vs_half": sh["speed_verdict"] if sh else None,
    }


PRIMARY_FIELDS = {"latency_ms": "median_ms", "latency_p95_ms": "p95_ms", "latency_iqr_ms": "iqr_ms", "first_call_ms": "first_call_ms",
                  "speedup": "speedup", "speedup_ci95": "speedup_ci95", "speed_verdict": "speed_verdict",
                  "speedup_ci_verdict": "speedup_ci_verdict", "speed_verdict_level": "speed_verdict_level",
                  "effective_speedup": "effective_speedup", "speedup_vs_half": "speedup_vs_half",
                  "speedup_vs_half_ci95": "speedup_vs_half_ci95", "speed_verdict_vs_half": "speed_verdict_vs_half"}


def summary_rows(details: dict[str, dict], params: ReportParams, bench: dict, stats: dict[str, dict] | None = None) -> list[dict]:
    """One row per variant: Table 1's numbers, compression, statistics, and per traffic profile (`profiles`) the
    latencies, rows per second and speedups with intervals and verdicts; the first profile's speed figures are also
    the row's own (`latency_ms`, `speedup`, ...: what the figures, the Pareto front and `smallest` use)."""
    if params.baseline not in details:
        raise PtqflowError(f"params.yaml: report.baseline {params.baseline!r} is not among the variants ({', '.join(details)})")
    keys = workloads(bench)
    half = half_baseline(details, params, bench)
    args = (params.bootstrap_resamples, params.seed, params.speed_equivalence, params.alpha, params.multiple_comparisons)
    speed = {k: speeds_against(bench, params.baseline, k, *args) for k in keys}
    speed_half = {k: speeds_against(bench, half, k, *args) if half else {} for k in keys}
    base = details[params.baseline]
    rows = []
    for name, m in details.items():
        rec = bench["variants"].get(name, {})
        profiles = {str(k): profile_speed(rec, k, speed[k].get(name), speed_half[k].get(name), name == params.baseline)
                    for k in keys}
        first = profiles[str(keys[0])]
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
                "timed": rec.get("timed", f"not timed: {rec.get('skipped', 'absent from the benchmark')}"),
                "compile": m.get("compile", "none"),
                "compression": base["size_on_disk"]["bytes"] / m["size_on_disk"]["bytes"],
                **{field: first[key] for field, key in PRIMARY_FIELDS.items()},
                "primary_profile": str(keys[0]),
                "profiles": profiles,
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
    """The smallest acceptable variant and, per traffic profile, the fastest acceptable one, with every variant's
    verdict and the Pareto front. `fastest` is the first profile's."""
    from .stats import FASTER

    base = next(r for r in rows if r["variant"] == params.baseline)
    verdicts = {r["variant"]: acceptable(r, base, params) for r in rows}
    ok = [r for r in rows if verdicts[r["variant"]][0]]
    smallest = min(ok, key=lambda r: (r["size_bytes"], speed_cost(r)))
    keys = list(rows[0].get("profiles") or {"": None})
    fastest = {k: min(ok, key=lambda r: (speed_cost(r["profiles"][k] if k else r), r["size_bytes"])) for k in keys}
    measurably = {k: (r["profiles"][k] if k else r)["speed_verdict"] == FASTER for k, r in fastest.items()}
    return {
        "smallest": smallest["variant"],
        "fastest": fastest[keys[0]]["variant"],
        "fastest_is_measurably_faster": measurably[keys[0]],
        "primary_profile": keys[0] or None,
        "fastest_by_profile": {k: r["variant"] for k, r in fastest.items() if k},
        "measurably_faster_by_profile": {k: v for k, v in measurably.items() if k},
        "acceptable": [r["variant"] for r in ok],
        "verdicts": {n: {"acceptable": v[0], "why": v[1]} for n, v in verdicts.items()},
        "pareto_front": pareto_front(rows),
        "max_accuracy_drop": params.max_accuracy_drop,
        "alpha": params.alpha,
        "multiple_comparisons": params.multiple_comparisons,
    }


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



def metrics_record(row: dict, unit: str) -> dict:
    """The dozen numbers of one variant that `dvc metrics show` / `dvc metrics diff` compare between runs: accuracy
    and its change, size, and per traffic profile its speed figure (p50 ms of a call, or rows per second) and the
    speedup against the baseline (intervals and the rest: metrics/comparison.json)."""
    st = row.get("stats") or {}
    out = {
        "accuracy": round(row["accuracy"], 6),
        "f1_macro": round(row["f1"], 6),
        "delta_accuracy": st.get("delta_accuracy"),
        "mcnemar_p": st.get("mcnemar_p"),
        "mcnemar_p_adjusted": st.get("mcnemar_p_adjusted"),
        f"size_{unit.lower()}": round(row["size"], 4),
        "compression": round(row["compression"], 4),
    }
    out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items() if v is not None}
    for name, p in (row.get("profiles") or {}).items():
        figure = ("rows_per_s", p["rows_per_s"]) if p["statistic"] == "throughput" else ("p50_ms", p["median_ms"])
        numbers = {figure[0]: figure[1], "speedup": p["speedup"]}
        numbers = {k: round(v, 4) for k, v in numbers.items() if v is not None}
        if numbers:
            out[name] = numbers
    return out


def pareto_csv(rows: list[dict], rec: dict) -> str:
    """plots/pareto.csv: one line per variant, the data of the DVC accuracy-vs-latency and -size plots (latency of
    the first traffic profile), and each profile's speedup."""
    import pandas as pd

    front = set(rec["pareto_front"])
    return pd.DataFrame([{
        "variant": r["variant"], "accuracy": r["accuracy"], "latency_ms": r["latency_ms"],
        "size_MiB": round(r["size_bytes"] / 2**20, 4), "size_MB": round(r["size_bytes"] / 1e6, 4),
        "speedup": r["speedup"], "acceptable": rec["verdicts"][r["variant"]]["acceptable"], "pareto": r["variant"] in front,
        **{f"speedup_{k}": p["speedup"] for k, p in (r.get("profiles") or {}).items()},
    } for r in rows]).to_csv(index=False)


def compare(variants: list[str], details_dir: str | Path, predictions_dir: str | Path, bench_path: str | Path,
            params: ReportParams) -> tuple[dict[str, dict], dict[str, str], dict, list[dict], dict]:
    """(details of the variants that ran, {skipped: why}, the benchmark, the rows, the recommendation)."""
    details, skipped = split_skipped(collect(variants, details_dir))
    if params.baseline in skipped:
        raise PtqflowError(f"report.baseline {params.baseline!r} was skipped on this machine: {skipped[params.baseline]}")
    bench_path = Path(bench_path)
    if not bench_path.is_file():
        raise PtqflowError(f"{bench_path}: missing (run: dvc repro benchmark)")
    bench = read_json(bench_path)
    if not bench["variants"].get(params.baseline, {}).get("latency"):
        raise PtqflowError(f"{bench_path}: the baseline {params.baseline!r} was not timed (run: dvc repro benchmark)")
    rows = summary_rows(details, params, bench, compare_all(list(details), predictions_dir, params))
    return details, skipped, bench, rows, recommend(rows, params)
