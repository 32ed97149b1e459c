"""Stage `prepare`: read data.source, carve a stratified validation split, tokenize with the model's tokenizer -> data/prepared/."""

from ptqflow.cli import stage_parser
from ptqflow.config import DataParams, ModelParams, load_params, load_section, to_dict
from ptqflow.errors import run_cli
from ptqflow.io import write_json
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/prepared", help="prepared splits folder")
    parser.add_argument("--metrics", default="metrics/data.json", help="rows per split (the DVC metric)")
    parser.add_argument("--details", default="reports/data.json", help="rows per split and class, dropped rows, input hash")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from ptqflow.data import headline, prepare
    from ptqflow.modeling import checked_tokenizer, trained_labels

    params = load_params(args.params)
    data = load_section(DataParams, "data", params)
    model = load_section(ModelParams, "model", params)
    with stage_run("prepare", not args.no_tracking) as run:
        run.log_params({"data": to_dict(data), "model": to_dict(model)})
        tokenizer = checked_tokenizer(model, data.max_length)
        metrics = prepare(data, tokenizer, args.out, trained_labels(model), model.label_map)
        write_json(args.details, metrics)
        write_json(args.metrics, headline(metrics))
        run.log_metrics(metrics["splits"])
        from ptqflow.data import lineage

        for item in lineage(args.out, ("train", "validation", "test")):
            run.log_dataset(**item)
        run.log_artifact(args.details)


if __name__ == "__main__":
    run_cli(main)
