"""Stage `quantize@<variant>`: apply the variant's scheme to models/finetuned/ -> models/quantized/<variant>/.
Calibrating schemes (ort_int8_static, int8_static, ov_int8) fit their activation ranges on the validation split of
--data; a scheme with an accuracy budget left null (`max_drop`) takes report.max_accuracy_drop."""

from ptqflow.cli import stage_parser
from ptqflow.config import ReportParams, build, load_params
from ptqflow.errors import run_cli
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--variant", required=True, help="a key of `variants` in the parameter file")
    parser.add_argument("--model", default="models/finetuned", help="fine-tuned model folder")
    parser.add_argument("--data", default="data/prepared", help="prepared data (its validation split calibrates)")
    parser.add_argument("--out", default=None, help="artifact folder (default: models/quantized/<variant>)")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from ptqflow.quantize import quantize_variant
    from ptqflow.quantize.registry import summary_line
    from ptqflow.calibration import for_model

    params = load_params(args.params)
    variants = params.get("variants") or {}
    # only report.max_accuracy_drop is read (dvc.yaml: the stage depends on that key alone)
    report = params.get("report") or {}
    budget = build(ReportParams, {k: report[k] for k in ("max_accuracy_drop",) if k in report}, "report")
    out = args.out or f"models/quantized/{args.variant}"
    with stage_run(f"quantize@{args.variant}", not args.no_tracking) as run:
        run.log_params({"variant": args.variant, **(variants.get(args.variant) or {})})
        # `variant` is the evaluate child's tag (one run per variant and experiment in a search); this one names its artifact
        run.set_tags({"artifact_of": args.variant, "scheme": (variants.get(args.variant) or {}).get("scheme", "?")})
        meta = quantize_variant(args.variant, variants.get(args.variant), args.model, out,
                                calibration=lambda: for_model(args.data, args.model), max_drop=budget.max_accuracy_drop)
        run.log_metrics(meta)
        run.log_artifact(f"{out}/ptqflow.json")
        print(summary_line(f"quantize@{args.variant}", meta))


if __name__ == "__main__":
    run_cli(main)
