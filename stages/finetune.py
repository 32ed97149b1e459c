"""Stage `finetune`: train the classifier on data/prepared/ -> models/finetuned/ (safetensors); with model.init:
finetuned, take model.pretrained as given instead (scored on the validation split, copied unchanged, not trained)."""

from ptqflow.cli import stage_parser
from ptqflow.config import ModelParams, TrainParams, load_params, load_section, to_dict
from ptqflow.errors import run_cli
from ptqflow.io import write_json
from ptqflow.tracking import stage_run


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", default="data/prepared", help="prepared splits folder")
    parser.add_argument("--out", default="models/finetuned", help="fine-tuned model folder")
    parser.add_argument("--metrics", default="metrics/train.json", help="validation accuracy, wall time, rows (the DVC metric)")
    parser.add_argument("--details", default="reports/train.json", help="loss per epoch, validation accuracy, wall time, batch sizes")
    parser.add_argument("--checkpoints", default=".cache/finetune", help="epoch checkpoints (a rerun resumes from them)")
    args = parser.parse_args()
    # heavy imports only now, so that --help answers at once
    from ptqflow.train import GIVEN, finetune, headline, is_main_process, take_as_given

    params = load_params(args.params)
    model = load_section(ModelParams, "model", params)
    train = load_section(TrainParams, "train", params)
    main_process = is_main_process()
    with stage_run("finetune", not args.no_tracking and main_process) as run:
        run.log_params({"model": to_dict(model), "train": to_dict(train)})
        if not model.trains:
            run.set_tags({"model_source": GIVEN, "mlflow.note.content": f"{model.pretrained}: {GIVEN}"})
            metrics = take_as_given(model, train, args.data, args.out, args.checkpoints)
        else:
            metrics = finetune(model, train, args.data, args.out, args.checkpoints)
        if not main_process:  # other ranks of a torchrun launch: rank 0 writes the outputs
            return
        write_json(args.details, metrics)
        write_json(args.metrics, headline(metrics))
        run.log_metrics(metrics)
        from ptqflow.data import lineage

        for item in lineage(args.data, ("train", "validation") if model.trains else ("validation",)):
            run.log_dataset(**item)
        run.log_artifact(args.details)
        if not model.trains:
            print(f"finetune: {model.pretrained} {GIVEN}: validation accuracy {metrics['val_accuracy']:.4f} on "
                  f"{metrics['validation_rows']} rows, classes matched as {metrics['label_mapping']}")


if __name__ == "__main__":
    run_cli(main)
