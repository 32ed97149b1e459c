"""Stage `report`: every variant's metrics -> reports/report.md (Table 1, per-class tables) and plots/figures/."""

from pathlib import Path

from ptqflow.cli import stage_parser
from ptqflow.config import ReportParams, load_params, load_section, to_dict
from ptqflow.errors import run_cli
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--metrics-dir", default="metrics/eval", help="per-variant metrics JSON files")
    parser.add_argument("--predictions-dir", default="plots/predictions", help="per-variant predictions CSV files")
    parser.add_argument("--comparison", default="metrics/comparison.json", help="statistics and ratios against the baselines")
    parser.add_argument("--out", default="reports/report.md", help="markdown report")
    parser.add_argument("--figures", default="plots/figures", help="figures folder")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from ptqflow.io import read_json
    from ptqflow.report import build_report, format_table

    params = load_params(args.params)
    report = load_section(ReportParams, "report", params)
    variants = list(params.get("variants") or {})
    with stage_run("report", not args.no_tracking) as run:
        run.log_params({"report": to_dict(report), "variants": ",".join(variants)})
        rows = build_report(variants, args.metrics_dir, args.predictions_dir, report, args.out, args.figures, args.comparison)
        run.log_metrics({r["variant"]: {k: r[k] for k in ("compression", "speedup")} | r["stats"] for r in rows})
        run.log_artifact(args.out)
        run.log_artifact(args.comparison)
        for png in sorted(Path(args.figures).glob("*.png")):
            run.log_artifact(png)
        print(format_table(rows, report.size_unit))
        rec = read_json(args.comparison)["recommendation"]
        print(f"recommended: smallest acceptable {rec['smallest']}, fastest acceptable {rec['fastest']} "
              f"(Pareto front: {', '.join(rec['pareto_front'])})")


if __name__ == "__main__":
    run_cli(main)
