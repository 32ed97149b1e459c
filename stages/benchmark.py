"""Stage `benchmark`: every runnable variant loaded into one process and timed interleaved on each traffic profile
(benchmark.profiles: one text at a time, batches of real rows, the fixed 16 x 128 batch) -> reports/benchmark.json."""

from ptqflow.cli import stage_parser
from ptqflow.config import BenchmarkParams, ReportParams, load_params, load_section, to_dict
from ptqflow.errors import run_cli
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--artifacts", default="models/quantized", help="one artifact folder per variant")
    parser.add_argument("--data", default="data/prepared", help="prepared splits folder (the timed batch is test rows)")
    parser.add_argument("--out", default="reports/benchmark.json", help="timings of every variant")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from ptqflow.benchmark import benchmark_artifacts, latency_at
    from ptqflow.io import write_json

    params = load_params(args.params)
    bench_params = load_section(BenchmarkParams, "benchmark", params)
    baseline = load_section(ReportParams, "report", params).baseline
    variants = params.get("variants") or {}
    with stage_run("benchmark", not args.no_tracking) as run:
        run.log_params({"benchmark": to_dict(bench_params), "variants": ",".join(variants)})
        bench = benchmark_artifacts(variants, args.artifacts, args.data, bench_params, anchor=baseline)
        write_json(args.out, bench)
        run.log_artifact(args.out)
        for profile in bench_params.profiles:
            for name, rec in bench["variants"].items():
                lat = latency_at(rec, profile)
                if lat:
                    run.log_metrics({f"{name}.{profile}.p50_ms": lat["median_ms"], f"{name}.{profile}.p99_ms": lat["p99_ms"],
                                     f"{name}.{profile}.rows_per_s": lat["rows_per_s"]})
        run.set_tags({"device": bench["environment"]["device_name"]})
        timed = [n for n, r in bench["variants"].items() if r.get("latency")]
        print(f"benchmark: {len(timed)} variants timed interleaved, {bench_params.rounds} rounds, "
              f"{bench['protocol']['threads']} threads on {bench['environment']['device_name']}; " + "; ".join(
                  f"{profile}: " + ", ".join(_figure(n, latency_at(bench["variants"][n], profile)) for n in timed)
                  for profile in bench_params.profiles))


def _figure(name: str, lat: dict) -> str:
    """'fp32 16.7 ms' (latency profile) or 'fp32 455 rows/s' (throughput profile)."""
    if lat["paired_on"] == "round_totals_ms":
        return f"{name} {lat['rows_per_s']:.0f} rows/s"
    return f"{name} {lat['median_ms']:.2f} ms"


if __name__ == "__main__":
    run_cli(main)
