"""`cast`: the fine-tuned model cast to float16 or bfloat16, the half-precision baselines.

They de-confound comparisons: a 4-bit variant computing in half precision is compared with a model that
computes in the same precision, not only with FP32. The weights are stored in the cast dtype (half the
FP32 file) and the model runs in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from .common import DTYPES, from_artifact, load_finetuned
from .registry import Scheme


@dataclass
class CastOptions:
    dtype: Literal["float16", "bfloat16"] = "float16"


def quantize(src_dir: Path, out_dir: Path, options: CastOptions) -> dict:
    model = load_finetuned(src_dir).to(DTYPES[options.dtype])
    model.save_pretrained(str(out_dir))
    return {"runtime_dtype": options.dtype, "n_parameters": model.num_parameters()}


def load(artifact_dir: Path, options: CastOptions, device: torch.device) -> torch.nn.Module:
    return from_artifact(artifact_dir, DTYPES[options.dtype], device)


SCHEME = Scheme("cast", CastOptions, quantize, load, "the FP32 model cast to float16 / bfloat16 (half-precision baselines)",
                loader="transformers")
