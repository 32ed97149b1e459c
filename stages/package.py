"""Stage `package`: the recommended variant (package.variant: smallest / fastest acceptable, or a name)
-> models/recommended/ (model, tokenizer, model card), registered in the MLflow Model Registry as a pyfunc
model logged from code (package.registered_model)."""

from ptqflow.cli import stage_parser
from ptqflow.config import load_params, load_section, to_dict
from ptqflow.errors import run_cli
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--comparison", default="metrics/comparison.json", help="the report stage's comparison")
    parser.add_argument("--artifacts", default="models/quantized", help="variant artifacts, one folder each")
    parser.add_argument("--details-dir", default="reports/eval", help="per-variant details (evaluate@)")
    parser.add_argument("--data", default="data/prepared", help="prepared data (labels, max_length)")
    parser.add_argument("--finetuned", default="models/finetuned", help="the fine-tuned model: its tokenizer is packaged")
    parser.add_argument("--out", default="models/recommended", help="the package folder")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from pathlib import Path

    from ptqflow.config import PackageParams
    from ptqflow.io import read_json
    from ptqflow.package import package, register

    params = load_params(args.params)
    pkg = load_section(PackageParams, "package", params)
    with stage_run("package", not args.no_tracking) as run:
        meta = package(pkg.variant, Path(args.comparison), Path(args.artifacts), Path(args.finetuned), Path(args.details_dir),
                       read_json(Path(args.data) / "meta.json"), Path(args.out), pkg.max_rows)
        run.log_params({"package": to_dict(pkg), "packaged_variant": meta["variant"], "loader": meta["loader"]})
        run.set_tags({"packaged_variant": meta["variant"], "scheme": meta["scheme"]})
        run.log_artifact(f"{args.out}/README.md")
        if pkg.registered_model:
            run.then(lambda run_id, parent: print(register(Path(args.out), pkg.registered_model, run_id, parent)))
        print(f"package: {meta['variant']} ({meta['scheme']}, loads with {meta['loader']}) -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
