"""The `ptqflow` command: `ptqflow assets` fetches the inputs, `ptqflow table` prints the comparison."""

from __future__ import annotations

import argparse
import os

from .errors import run_cli


def _assets(args: argparse.Namespace) -> None:
    from .assets import fetch_assets

    for line in fetch_assets(args.mirror, args.data_dir, args.model_dir):
        print(line)


def _hub_check(args: argparse.Namespace) -> None:
    from .assets import require_hub

    require_hub(", ".join(args.what), "run the default (offline) configuration with `make run`, or copy the "
                "weights and data to local folders and point model.pretrained / data.source at them")
    print(f"Hugging Face Hub reachable for {', '.join(args.what)}")


def _table(args: argparse.Namespace) -> None:
    from .config import ReportParams, load_params, load_section
    from .report import collect, format_table, summary_rows

    params = load_params(args.params)
    report = load_section(ReportParams, "report", params)
    rows = summary_rows(collect(list(params.get("variants") or {}), args.metrics_dir), report)
    print(format_table(rows, report.size_unit))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptqflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assets", help="copy AG News and the GPT-2 tokenizer/config from a mirror, else the Hub")
    p.add_argument("--mirror", default=os.environ.get("PTQFLOW_MIRROR", "../shared"),
                   help="folder with data/ag_news/ and models/gpt2/ (default: $PTQFLOW_MIRROR or ../shared)")
    p.add_argument("--data-dir", default="data/raw/ag_news", help="where AG News goes (default: %(default)s)")
    p.add_argument("--model-dir", default="models/base/gpt2", help="where the tokenizer + config go (default: %(default)s)")
    p.set_defaults(func=_assets)
    p = sub.add_parser("hub-check", help="fail fast, in one line, when the Hugging Face Hub cannot be reached")
    p.add_argument("what", nargs="*", default=["gpt2", "fancyzhx/ag_news"], help="what needs the Hub (for the message)")
    p.set_defaults(func=_hub_check)
    p = sub.add_parser("table", help="print the comparison table (one row per variant) from metrics/eval/")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    p.add_argument("--metrics-dir", default="metrics/eval", help="per-variant metrics (default: %(default)s)")
    p.set_defaults(func=_table)
    return parser


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every stage script shares: the parameter file and switching MLflow off."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow (also: PTQFLOW_TRACKING=0)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(lambda: args.func(args))
