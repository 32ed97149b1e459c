"""`cast`: the fine-tuned model cast to float16 or bfloat16, the half-precision baselines.

They de-confound comparisons: a 4-bit variant computing in half precision is compared with a model that
computes in the same precision, not only with FP32. The weights are stored in the cast dtype (half the
FP32 file) and the model runs in it. On a CPU without native arithmetic for the type (no avx512_fp16 / amx_fp16
for float16, no avx512_bf16 / amx_bf16 for bfloat16: decided from the CPU flags machine.py records) PyTorch
emulates it; such a variant is skipped with the reason unless `emulated: true` asks for it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from .common import DTYPES, from_artifact, load_finetuned, runtime_device
from .registry import Scheme


@dataclass
class CastOptions:
    dtype: Literal["float16", "bfloat16"] = "float16"
    # on a CPU without native arithmetic for `dtype` (machine.native_half) the variant is skipped with the reason;
    # true runs it anyway, labelled emulated (correct answers, but float16 is then many times slower than float32)
    emulated: bool = False


def available(options: CastOptions, device: torch.device) -> str | None:
    """A half type this CPU has no arithmetic for is emulated by PyTorch: not a baseline worth timing."""
    from ..machine import cpu_info, native_half

    if device.type != "cpu" or options.emulated or native_half(options.dtype):
        return None
    flags = "avx512_fp16 / amx_fp16" if options.dtype == "float16" else "avx512_bf16 / amx_bf16"
    return (f"{options.dtype} is emulated on this CPU ({cpu_info()['model']}: no {flags} in its flags), many times slower "
            f"than float32; set emulated: true in the variant to run it anyway")


def _runtime(options: CastOptions, device: torch.device) -> str:
    native = device.type != "cpu" or not options.emulated
    if not native:
        from ..machine import native_half

        native = native_half(options.dtype)
    return options.dtype if native else f"{options.dtype} (emulated on this CPU)"


def quantize(src_dir: Path, out_dir: Path, options: CastOptions) -> dict:
    model = load_finetuned(src_dir).to(DTYPES[options.dtype])
    model.save_pretrained(str(out_dir))
    return {"runtime_dtype": _runtime(options, runtime_device()), "n_parameters": model.num_parameters()}


def load(artifact_dir: Path, options: CastOptions, device: torch.device) -> torch.nn.Module:
    return from_artifact(artifact_dir, DTYPES[options.dtype], device)


SCHEME = Scheme("cast", CastOptions, quantize, load, "the FP32 model cast to float16 / bfloat16 (half-precision baselines)",
                available=available, loader="transformers")
