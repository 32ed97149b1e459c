"""Stage `evaluate@<variant>`: score and size the variant's artifact on the test split (speed: the benchmark stage)."""

from ptqflow.cli import stage_parser
from ptqflow.config import EvalParams, load_params, load_section, to_dict
from ptqflow.errors import run_cli
from ptqflow.io import write_json, write_text
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--variant", required=True, help="a key of `variants` in the parameter file")
    parser.add_argument("--data", default="data/prepared", help="prepared splits folder")
    parser.add_argument("--artifact", default=None, help="artifact folder (default: models/quantized/<variant>)")
    parser.add_argument("--details", default=None, help="details JSON (default: reports/eval/<variant>.json)")
    parser.add_argument("--predictions", default=None, help="predictions CSV (default: plots/predictions/<variant>.csv)")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from ptqflow.evaluate import evaluate_variant

    params = load_params(args.params)
    evaluation = load_section(EvalParams, "eval", params)
    raw = (params.get("variants") or {}).get(args.variant)
    v = args.variant
    metrics_path = args.details or f"reports/eval/{v}.json"
    predictions_path = args.predictions or f"plots/predictions/{v}.csv"
    with stage_run(f"evaluate@{v}", not args.no_tracking) as run:
        run.log_params({"variant": v, **(raw or {}), "eval": to_dict(evaluation)})
        run.set_tags({"variant": v, "scheme": (raw or {}).get("scheme", "?")})
        metrics, predictions = evaluate_variant(v, raw, args.artifact or f"models/quantized/{v}", args.data, evaluation)
        write_json(metrics_path, metrics)
        write_text(predictions_path, predictions.to_csv(index=False))
        run.log_artifact(metrics_path)
        if "skipped" in metrics:
            run.set_tags({"device": metrics["environment"]["device_name"], "skipped": metrics["skipped"]})
            print(f"evaluate@{v}: skipped on this machine: {metrics['skipped']}")
            return
        run.log_metrics(metrics)
        from ptqflow.data import lineage

        for item in lineage(args.data, ("test",)):
            run.log_dataset(**item)
        run.set_tags({"device": metrics["environment"]["device_name"], "runtime_dtype": metrics["runtime_dtype"]})
        print(f"evaluate@{v}: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
              f"{metrics['size_on_disk']['MiB']:.2f} MiB on disk, {metrics['predict_wall_s']:.1f} s to predict")


if __name__ == "__main__":
    run_cli(main)
