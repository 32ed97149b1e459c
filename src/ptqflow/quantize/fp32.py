"""`fp32`: the fine-tuned model unchanged, the baseline every other variant is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from .common import from_artifact, load_finetuned
from .registry import Scheme


@dataclass
class Fp32Options:
    pass


def quantize(src_dir: Path, out_dir: Path, options: Fp32Options) -> dict:
    model = load_finetuned(src_dir)
    model.save_pretrained(str(out_dir))
    return {"runtime_dtype": "float32", "quantized_tensors": 0, "n_parameters": model.num_parameters()}


def load(artifact_dir: Path, options: Fp32Options, device: torch.device) -> torch.nn.Module:
    return from_artifact(artifact_dir, torch.float32, device)


SCHEME = Scheme("fp32", Fp32Options, quantize, load, "full precision (the fine-tuned model as is)", loader="transformers")
