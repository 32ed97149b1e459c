"""Stage `report`: every variant's scores, timings and statistics -> reports/report.md, plots/figures/,
metrics/comparison.json, metrics/eval/<variant>.json and plots/pareto.csv."""

from pathlib import Path

from ptqflow.cli import stage_parser
from ptqflow.config import ReportParams, load_params, load_section, to_dict
from ptqflow.errors import run_cli
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--details-dir", default="reports/eval", help="per-variant details JSON files (evaluate@)")
    parser.add_argument("--predictions-dir", default="plots/predictions", help="per-variant predictions CSV files")
    parser.add_argument("--benchmark", default="reports/benchmark.json", help="interleaved timings (benchmark stage)")
    parser.add_argument("--train", default="reports/train.json", help="how the model came: trained here or used as given")
    parser.add_argument("--comparison", default="metrics/comparison.json", help="statistics and ratios against the baselines")
    parser.add_argument("--metrics-dir", default="metrics/eval", help="per-variant DVC metrics (the dozen numbers)")
    parser.add_argument("--pareto", default="plots/pareto.csv", help="data of the DVC Pareto plots")
    parser.add_argument("--out", default="reports/report.md", help="markdown report")
    parser.add_argument("--figures", default="plots/figures", help="figures folder")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from ptqflow.comparison import metrics_record
    from ptqflow.report import build_report

    params = load_params(args.params)
    report = load_section(ReportParams, "report", params)
    variants = list(params.get("variants") or {})
    with stage_run("report", not args.no_tracking) as run:
        run.log_params({"report": to_dict(report), "variants": ",".join(variants)})
        rows = build_report(variants, args.details_dir, args.predictions_dir, args.benchmark, report, args.out, args.figures,
                            args.comparison, args.metrics_dir, args.pareto, params.get("variant_set"), args.train)
        run.log_metrics({r["variant"]: metrics_record(r, report.size_unit) for r in rows})
        for path in (args.out, args.comparison, args.benchmark, args.pareto, *sorted(Path(args.figures).glob("*.png"))):
            run.log_artifact(path)
        run.log_parent_artifact(args.out)  # the execution's parent run holds the report and its figures
        run.log_parent_artifact(args.comparison)
        run.log_parent_artifact(args.figures, "figures")
        from ptqflow.io import read_json

        rec = read_json(args.comparison)["recommendation"]  # the table: `ptqflow table` (`make run` ends with it)
        fastest = ", ".join(f"{v} ({k})" for k, v in rec["fastest_by_profile"].items())
        print(f"report: {len(rows)} variants -> {args.out}; recommended: smallest acceptable {rec['smallest']}, "
              f"fastest acceptable {fastest} (Pareto front: {', '.join(rec['pareto_front'])})")


if __name__ == "__main__":
    run_cli(main)
