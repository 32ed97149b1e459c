"""`bnb_int8` (LLM.int8) and `bnb_nf4` (4-bit NormalFloat, double quantization): bitsandbytes via transformers.

transformers replaces GPT-2's `Conv1D` projections (4 per block) with bitsandbytes modules when the
fine-tuned model is loaded with a `BitsAndBytesConfig`; embeddings, layer norms and the classification
head `score` stay in full precision. `quantize` checks exactly that: every Conv1D became a bitsandbytes
layer, none is left, `score` is a plain float Linear, and records the counts. The quantized model is
saved with `save_pretrained` (safetensors) and loaded from there by `evaluate`.

LLM.int8 (Dettmers et al., 2022): int8 weights with a per-row absmax scale; at run time activation columns
whose magnitude exceeds `llm_int8_threshold` are multiplied in 16/32-bit, the rest in int8 (threshold 0
disables that outlier decomposition). NF4: 4-bit codes of a normal-quantile code book per block of 64
weights, block absmax constants themselves quantized to 8 bits (double quantization); matrix products
run in `compute_dtype` after dequantizing each block.

`embeddings: int8 | int4` (embedding.py) also quantizes the token and position tables, which bitsandbytes
leaves in full precision: their quantized codes and scales are saved in the bitsandbytes
checkpoint in place of the float tables and attached as quantized lookups at load.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from transformers import BitsAndBytesConfig, GPT2ForSequenceClassification
from transformers.utils import logging as hf_logging
from transformers.pytorch_utils import Conv1D

from ..errors import PtqflowError
from .common import DTYPES, count_conv1d, load_finetuned, runtime_device
from .embedding import EMBEDDING_MODULES, EmbeddingMode, attach_embeddings, count_quantized_embeddings, describe, quantize_embeddings
from .registry import Scheme

KEEP_FULL_PRECISION = ["score"]  # the classification head
CPU_4BIT_BLOCK = 64  # input features per block in bitsandbytes' CPU 4-bit packing


@dataclass
class Int8BnbOptions:
    llm_int8_threshold: float = 6.0  # bitsandbytes' default; 0 turns the outlier decomposition off
    embeddings: EmbeddingMode = "keep"

    def __post_init__(self) -> None:
        if self.llm_int8_threshold < 0:
            raise PtqflowError(f"params.yaml: llm_int8_threshold must be >= 0, got {self.llm_int8_threshold}")


@dataclass
class Nf4BnbOptions:
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    double_quant: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    embeddings: EmbeddingMode = "keep"


def int8_config(options: Int8BnbOptions) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_8bit=True, llm_int8_threshold=options.llm_int8_threshold, llm_int8_skip_modules=KEEP_FULL_PRECISION
    )


def nf4_config(options: Nf4BnbOptions) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=DTYPES[options.compute_dtype],
        llm_int8_skip_modules=KEEP_FULL_PRECISION,
    )


def bnb_module_types() -> tuple[type, ...]:
    import bitsandbytes as bnb

    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def check_replaced(model: torch.nn.Module, expected: int) -> int:
    """Assert every Conv1D projection became a bitsandbytes layer and the head stayed full precision."""
    replaced = sum(isinstance(m, bnb_module_types()) for m in model.modules())
    left = count_conv1d(model)
    head = model.score
    if replaced != expected or left:
        raise PtqflowError(f"bitsandbytes replaced {replaced} of {expected} Conv1D projections ({left} left unquantized)")
    if isinstance(head, bnb_module_types()) or not head.weight.is_floating_point():
        raise PtqflowError("the classification head `score` was quantized; it must stay in full precision")
    return replaced


def check_cpu_4bit_shapes(model: torch.nn.Module, device: torch.device) -> None:
    """bitsandbytes' CPU 4-bit kernel packs weights in blocks of 64 input features: refuse other widths up front."""
    if device.type != "cpu":
        return
    bad = sorted({m.weight.shape[0] for m in model.modules() if isinstance(m, Conv1D) and m.weight.shape[0] % CPU_4BIT_BLOCK})
    if bad:
        raise PtqflowError(
            f"4-bit bitsandbytes on CPU needs every projection's input width to be a multiple of {CPU_4BIT_BLOCK} "
            f"(got {bad}); use n_embd a multiple of 64, or run on CUDA"
        )


def _quantize_with(config: BitsAndBytesConfig, embeddings: EmbeddingMode, src_dir: Path, out_dir: Path) -> dict:
    fp_model = load_finetuned(src_dir)
    expected = count_conv1d(fp_model)
    device = runtime_device()
    if config.load_in_4bit:
        check_cpu_4bit_shapes(fp_model, device)
    model = GPT2ForSequenceClassification.from_pretrained(str(src_dir), quantization_config=config, device_map=device.type)
    replaced = check_replaced(model, expected)
    n_parameters = model.num_parameters()
    emb = quantize_embeddings(model, embeddings, model.transformer.ln_f.weight.dtype)
    model.save_pretrained(str(out_dir))  # the quantized embeddings' buffers (codes, scale) replace wte/wpe.weight
    if emb and set(emb) - set(_stored_embeddings(out_dir, torch.device("cpu"))):
        raise PtqflowError(f"{out_dir}: save_pretrained did not store the quantized embeddings")
    kept = ["layer norms", *KEEP_FULL_PRECISION] + ([] if emb else list(EMBEDDING_MODULES))
    return {
        "quantized_modules": replaced,
        "conv1d_projections": expected,
        "quantized_embeddings": len(emb) // 2,
        "kept_full_precision": kept,
        "quantized_on": device.type,
        "n_parameters": n_parameters,
    }


def load_quantized(artifact_dir: Path, embeddings: EmbeddingMode, device: torch.device) -> torch.nn.Module:
    quiet = _quiet_transformers() if embeddings != "keep" else contextlib.nullcontext()
    with quiet:  # the embeddings are not in the bitsandbytes checkpoint: transformers would warn they are "newly initialized"
        model = GPT2ForSequenceClassification.from_pretrained(str(artifact_dir), device_map=device.type)
    if embeddings != "keep":
        attach_embeddings(model, embeddings, _stored_embeddings(artifact_dir, device), model.transformer.ln_f.weight.dtype)
        if count_quantized_embeddings(model) != len(EMBEDDING_MODULES):
            raise PtqflowError(f"{artifact_dir}: the quantized embeddings were not attached")
    expected = 4 * model.config.n_layer
    check_replaced(model, expected)
    return model


def _stored_embeddings(artifact_dir: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The quantized-embedding tensors (wte/wpe codes and scales) stored in the artifact's weight files."""
    tensors: dict[str, torch.Tensor] = {}
    for path in artifact_dir.glob("*.safetensors"):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(EMBEDDING_MODULES)})
    return tensors


@contextlib.contextmanager
def _quiet_transformers():
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def quantize_int8(src_dir: Path, out_dir: Path, options: Int8BnbOptions) -> dict:
    info = _quantize_with(int8_config(options), options.embeddings, src_dir, out_dir)
    rt = "int8 weights; LLM.int8 matmul on float16-cast activations, outlier columns in float16"
    return {"runtime_dtype": f"{rt}; {describe(options.embeddings)}", **info}


def quantize_nf4(src_dir: Path, out_dir: Path, options: Nf4BnbOptions) -> dict:
    info = _quantize_with(nf4_config(options), options.embeddings, src_dir, out_dir)
    return {"runtime_dtype": f"{options.quant_type} weights, {options.compute_dtype} compute; {describe(options.embeddings)}", **info}


def load(artifact_dir: Path, options, device: torch.device) -> torch.nn.Module:
    # LLM.int8 warns on every forward that it casts float32 activations to float16; runtime_dtype says so once.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    return load_quantized(artifact_dir, options.embeddings, device)


INT8 = Scheme("bnb_int8", Int8BnbOptions, quantize_int8, load, "bitsandbytes LLM.int8 on the Conv1D projections")
NF4 = Scheme("bnb_nf4", Nf4BnbOptions, quantize_nf4, load, "bitsandbytes 4-bit NF4 with double quantization")
