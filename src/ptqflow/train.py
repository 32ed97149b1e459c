"""Fine-tune the classifier with the Hugging Face `Trainer` (AdamW, linear warm-up/decay, epoch checkpoints), or
take a trained classifier as given (`model.init: finetuned`): loaded, scored on the validation split, handed on
unchanged (`take_as_given`). Either way the `finetune` stage writes models/finetuned and reports/train.json.

Multi-GPU comes from the launcher: `torchrun --nproc-per-node N stages/finetune.py` runs the same code
data-parallel (the Trainer's DDP). `train.batch_size` is per device, so the effective batch is
batch_size x world size; the learning rate is not rescaled. Both are recorded in reports/train.json: to keep
a 1-GPU run's optimisation on N GPUs, divide `train.batch_size` by N. Only rank 0 writes outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from .config import ModelParams, TrainParams, to_dict
from .data import load_prepared
from .errors import PtqflowError
from .io import atomic_dir
from .machine import device_name
from .modeling import build_model, checked_tokenizer, configure_padding, pick_device
from .structure import uses_token_types


def _accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def finetune(
    model_params: ModelParams, train_params: TrainParams, prepared_dir: str | Path, out_dir: str | Path, work_dir: str | Path
) -> dict:
    """Train on the prepared train split, validate each epoch, save the model (safetensors) to `out_dir`.

    Epoch checkpoints go to `work_dir`; a run with a checkpoint there resumes from it. Returns the details for reports/train.json.
    """
    set_seed(train_params.seed)
    data, meta = load_prepared(prepared_dir)
    work_dir = Path(work_dir) / run_fingerprint(model_params, train_params, meta)
    tokenizer = checked_tokenizer(model_params, meta["max_length"])
    model = build_model(model_params, meta["classes"], tokenizer.pad_token_id)
    configure_padding(tokenizer, model)
    freeze(model, model_params, train_params)
    device = pick_device(train_params.device)
    attention = training_attention(model, train_params.attention, device)
    bf16 = use_bf16(train_params.precision, device)
    args = _training_args(train_params, work_dir, device, bf16)
    trainer = _trainer(model, tokenizer, data, args)
    checkpoint = _last_checkpoint(work_dir)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - start
    final_eval = _last_eval(trainer) or trainer.evaluate()

    if trainer.is_world_process_zero():  # under torchrun only rank 0 writes
        with atomic_dir(out_dir) as tmp:
            trainer.save_model(str(tmp))
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the params are in params.yaml
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints only matter for resuming an interrupted run

    history = trainer.state.log_history
    per_epoch = {}
    for row in history:
        if "epoch" not in row:
            continue
        ep = per_epoch.setdefault(round(row["epoch"], 2), {"epoch": round(row["epoch"], 2)})
        if "loss" in row:
            ep["train_loss"] = row["loss"]
        if "eval_loss" in row:
            ep["val_loss"] = row["eval_loss"]
            ep["val_accuracy"] = row["eval_accuracy"]
    world = max(args.world_size, 1)
    return {
        "epochs": list(per_epoch.values()),
        "val_accuracy": final_eval["eval_accuracy"],
        "val_loss": final_eval["eval_loss"],
        "train_loss": result.training_loss,
        "wall_time_s": round(wall, 2),
        "resumed_from_checkpoint": checkpoint is not None,
        "device": device_name(device),
        "precision": "bf16 autocast (float32 weights)" if bf16 else "float32",
        "attention": attention,
        "group_by_length": train_params.group_by_length,
        "world_size": world,
        "per_device_batch_size": train_params.batch_size,
        "effective_batch_size": train_params.batch_size * world * args.gradient_accumulation_steps,
        "learning_rate": train_params.lr,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_rows": len(data["train"]),
        "validation_rows": len(data["validation"]),
        "torch": torch.__version__,
    }


def _trainer(model: torch.nn.Module, tokenizer, data, args: TrainingArguments) -> Trainer:
    """The Trainer over the prepared splits (the text columns dropped; token types only for architectures that
    embed them), validation rows longest first, batches padded by the collator."""
    text_columns = [c for c in data["validation"].column_names if c not in ("input_ids", "attention_mask", "labels", "token_type_ids")]
    if "token_type_ids" in data["validation"].column_names and not uses_token_types(model.config):
        text_columns.append("token_type_ids")  # segments only for architectures that embed them
    return Trainer(
        model=model,
        args=args,
        train_dataset=data["train"].remove_columns(text_columns) if "train" in data else None,
        eval_dataset=longest_first(data["validation"]).remove_columns(text_columns),
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        compute_metrics=_accuracy,
    )


GIVEN = "used as given, not trained"
LEFTOVERS = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")  # not the model


def take_as_given(model_params: ModelParams, train_params: TrainParams, prepared_dir: str | Path, out_dir: str | Path,
                  work_dir: str | Path) -> dict:
    """`model.init: finetuned`: load the trained classifier in `model.pretrained` as it is, score it on the validation
    split (the prepared labels are already in its output order: labels.py), stop when that accuracy is not above
    chance (its labels are then probably mismatched), and hand it on to `out_dir` unchanged: a local folder's files
    are copied byte for byte (weights, config, tokenizer; training leftovers such as optimizer.pt are not), except
    config.json when the model had no pad token id (set to the tokenizer's, recorded). Returns reports/train.json."""
    from . import labels
    from .modeling import load_config, load_given

    data, meta = load_prepared(prepared_dir)
    config = load_config(model_params)
    mine = labels.model_labels(config)
    if meta.get("label_mapping") is None or list(meta["label_mapping"]) != mine:
        raise PtqflowError(f"{prepared_dir} was not prepared for {model_params.pretrained}'s classes ({', '.join(mine)}): "
                           "run `dvc repro prepare`")
    tokenizer = checked_tokenizer(model_params, meta["max_length"])
    model = load_given(model_params, tokenizer.pad_token_id)
    changed = [] if model.config.pad_token_id == config.pad_token_id else [
        f"config.json: pad_token_id set to {model.config.pad_token_id} (the tokenizer's pad token; the model had none)"]
    device = pick_device(train_params.device)
    args = _training_args(train_params, Path(work_dir) / "given", device)
    start = time.perf_counter()
    scores = _trainer(model, tokenizer, data, args).evaluate()
    wall = time.perf_counter() - start
    val = data["validation"]
    counts = np.bincount(np.asarray(val["labels"]), minlength=len(meta["classes"])).tolist()
    above, chance = labels.chance_check(round(scores["eval_accuracy"] * len(val)), len(val), counts)
    if not above:
        raise PtqflowError(f"{chance}: the model's labels are probably mismatched with the data's (matched as "
                           f"{meta['label_mapping']}); give model.label_map, or check model.pretrained and data.source")
    copied = _hand_on(model_params.pretrained, model, tokenizer, out_dir, bool(changed))
    shutil.rmtree(Path(work_dir) / "given", ignore_errors=True)
    return {
        "trained": False,
        "how": GIVEN,
        "source": model_params.pretrained,
        "files": copied,
        "changed": changed,
        "label_mapping": meta["label_mapping"],
        "chance": chance,
        "val_accuracy": scores["eval_accuracy"],
        "val_loss": scores["eval_loss"],
        "wall_time_s": round(wall, 2),
        "device": device_name(device),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_rows": 0,
        "validation_rows": len(val),
        "torch": torch.__version__,
    }


def _hand_on(source: str, model: torch.nn.Module, tokenizer, out_dir: str | Path, config_changed: bool) -> dict[str, str]:
    """Write the given model to `out_dir`: a local folder's top-level files copied as they are (their sha256
    returned), config.json saved again only when `config_changed`; a Hub model saved with save_pretrained."""
    folder = Path(source)
    with atomic_dir(out_dir) as tmp:
        if not folder.is_dir():
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        else:
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.name not in LEFTOVERS and not path.name.startswith("rng_state"):
                    shutil.copy2(path, tmp / path.name)
            if config_changed:
                model.config.save_pretrained(str(tmp))
        return {p.name: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.iterdir()) if p.is_file()}


def training_attention(model: torch.nn.Module, requested: str, device: torch.device) -> str:
    """Set the attention implementation used while training (`train.attention`; the saved config does not keep it,
    so evaluation and export use the model's default): auto = eager on a CPU, where its backward under bf16
    autocast ran 243 ms vs SDPA's 296 ms per batch of 16 x 64 tokens (all-MiniLM-L6-v2, 2-core AMD EPYC,
    2026-11-30), else the default. An architecture that cannot switch keeps its own (returned, and recorded)."""
    current = getattr(model.config, "_attn_implementation", None) or "default"
    wanted = requested if requested != "auto" else ("eager" if device.type == "cpu" else current)
    if wanted != current and getattr(model, "_can_set_attn_implementation", lambda: False)():
        model.set_attn_implementation(wanted)
    return getattr(model.config, "_attn_implementation", None) or current


def freeze(model: torch.nn.Module, model_params: ModelParams, train_params: TrainParams) -> None:
    """Keep pretrained parts as loaded: the input (token) embedding table (`freeze_input_embeddings`, auto = when
    the model is pretrained: no gradient or optimizer step for its vocab x width weights) and the first `freeze_layers` transformer layers (no backward
    pass through them either). A scratch model has nothing pretrained to keep: asking is a one-line error."""
    from .structure import layers

    embeddings = train_params.freeze_input_embeddings
    if embeddings == "auto":  # frozen when pretrained, trained when random
        embeddings = model_params.init == "pretrained"
    if not (embeddings or train_params.freeze_layers):
        return
    if model_params.init == "scratch":
        raise PtqflowError("params.yaml: train.freeze_input_embeddings / freeze_layers need model.init: pretrained (a scratch "
                           "model's weights are random and must be trained)")
    if embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if train_params.freeze_layers:
        stack = layers(model)
        if train_params.freeze_layers >= len(stack):
            raise PtqflowError(f"params.yaml: train.freeze_layers {train_params.freeze_layers} leaves none of the model's "
                               f"{len(stack)} layers to train")
        for layer in list(stack)[: train_params.freeze_layers]:
            layer.requires_grad_(False)


def longest_first(ds):
    """The rows sorted by length, longest first: each evaluation batch is padded to its own longest row, so
    sorted rows pad (and cost) far less than rows in their original order; accuracy does not depend on it."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    return ds.select(sorted(range(len(lengths)), key=lambda i: -lengths[i]))


def _last_eval(trainer: Trainer) -> dict | None:
    """The validation scores logged at the last step (the last epoch's evaluation), so it is not run twice."""
    for row in reversed(trainer.state.log_history):
        if "eval_accuracy" in row:
            return row if row.get("step") == trainer.state.global_step else None
    return None


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (torchrun / accelerate launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def run_fingerprint(model_params: ModelParams, train_params: TrainParams, data_meta: dict) -> str:
    """A short hash of everything that determines the run, so a checkpoint is only resumed by the same run."""
    blob = json.dumps([to_dict(model_params), to_dict(train_params), data_meta], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: asked for (`bf16`), or `auto` and the device computes bf16 natively
    (machine.native_half on a CPU; torch.cuda.is_bf16_supported on a GPU). The weights, the optimizer state and
    the saved model stay float32 either way: that is the baseline every variant is quantized from."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from .machine import native_half

    return native_half("bfloat16")


def _training_args(p: TrainParams, work_dir: str | Path, device: torch.device, bf16: bool = False) -> TrainingArguments:
    return TrainingArguments(
        bf16=bf16,
        train_sampling_strategy="group_by_length" if p.group_by_length else "random",
        output_dir=str(work_dir),
        learning_rate=p.lr,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.eval_batch_size,
        num_train_epochs=p.epochs,
        weight_decay=p.weight_decay,
        warmup_steps=p.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        lr_scheduler_type="linear",
        optim="adamw_torch_fused",  # one fused kernel per step (CPU and CUDA): 5 vs 16 ms per step on the CPU
        seed=p.seed,
        data_seed=p.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=1,
        report_to=[],
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every parameter takes part in each forward pass
    )


def _last_checkpoint(work_dir: str | Path) -> str | None:
    """The newest complete checkpoint (trainer_state.json is written last), or None."""
    work_dir = Path(work_dir)
    done = [p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()] if work_dir.is_dir() else []
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


HEADLINE = ("val_accuracy", "wall_time_s", "train_rows", "validation_rows")


def headline(details: dict) -> dict:
    """What `dvc metrics show` keeps of metrics/train.json (every number stays in reports/train.json)."""
    return {k: details[k] for k in HEADLINE if k in details}
