"""`bnb_int8` (LLM.int8) and `bnb_nf4` (4-bit NormalFloat, double quantization): bitsandbytes via transformers.

transformers replaces the body's projections (every nn.Linear, and GPT-2's `Conv1D`) with bitsandbytes
modules when the fine-tuned model is loaded with a `BitsAndBytesConfig`; the classification head (found by
structure.py, passed as `llm_int8_skip_modules`), embeddings and norms stay in full precision. `quantize`
checks exactly that: every projection structure.py lists became a bitsandbytes layer, none is left, the head
is plain float, and records the counts. The quantized model is
saved with `save_pretrained` (safetensors) and loaded from there by `evaluate`.

LLM.int8 (Dettmers et al., 2022): int8 weights with a per-row absmax scale; at run time activation columns
whose magnitude exceeds `llm_int8_threshold` are multiplied in 16/32-bit, the rest in int8 (threshold 0
disables that outlier decomposition). NF4: 4-bit codes of a normal-quantile code book per block of 64
weights, block absmax constants themselves quantized to 8 bits (double quantization); matrix products
run in `compute_dtype` after dequantizing each block.

`embeddings: int8 | int4 | int3 | int2` (embedding.py) also quantizes the embedding tables, which bitsandbytes
leaves in full precision: their quantized codes and scales are saved in the bitsandbytes
checkpoint in place of the float tables and attached as quantized lookups at load.

`embeddings: auto` (bnb_nf4) is the size search: with the projections in NF4, every table is tried at 2, then 3,
then 4 bits per value on the whole validation split, and the fewest bits whose accuracy drop against the float
model fits `max_drop` (its one-sided `budget_confidence` bound, sensitivity.smallest_fitting; max_drop null =
report.max_accuracy_drop) are kept; none fitting keeps the tables float. The artifact records every try.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

from .. import structure
from ..errors import PtqflowError
from .common import DTYPES, load_finetuned, runtime_device
from .embedding import EmbeddingMode, attach_embeddings, count_quantized_embeddings, describe, embedding_names, quantize_embeddings
from ..calibration import Calibration
from .registry import Scheme

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
    embeddings: Literal["keep", "int8", "int4", "int3", "int2", "auto"] = "keep"  # auto: the size search (module docstring)
    max_drop: float | None = None  # embeddings: auto: validation accuracy drop allowed; null: report.max_accuracy_drop
    budget_confidence: float = 0.95  # embeddings: auto: the drop's one-sided bootstrap bound that must fit

    def budgeted(self) -> bool:
        return self.embeddings == "auto"

    def __post_init__(self) -> None:
        from ..config import check

        check(self.max_drop is None or 0.0 <= self.max_drop < 1.0, "max_drop", "a fraction in [0, 1) or null", self.max_drop)
        check(0.5 <= self.budget_confidence < 1.0, "budget_confidence", "a level in [0.5, 1)", self.budget_confidence)


def int8_config(options: Int8BnbOptions, head: list[str]) -> BitsAndBytesConfig:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=options.llm_int8_threshold, llm_int8_skip_modules=head)


def nf4_config(options: Nf4BnbOptions, head: list[str]) -> BitsAndBytesConfig:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=DTYPES[options.compute_dtype],
        llm_int8_skip_modules=head,
    )


def bnb_module_types() -> tuple[type, ...]:
    import bitsandbytes as bnb

    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def check_replaced(model: torch.nn.Module, expected: int, where: str = "") -> int:
    """Assert every body projection became a bitsandbytes layer and the head stayed full precision."""
    found = structure.of(model)
    kinds = bnb_module_types()
    replaced = sum(isinstance(model.get_submodule(n), kinds) for n in found.projections)
    left = len(found.projections) - replaced
    if replaced != expected or left:
        raise PtqflowError(f"{where + ': ' if where else ''}bitsandbytes replaced {replaced} of {expected} projections "
                           f"({left} left unquantized)")
    for name in found.head:
        head = model.get_submodule(name)
        if isinstance(head, kinds) or not head.weight.is_floating_point():
            raise PtqflowError(f"the classification head `{name}` was quantized; it must stay in full precision")
    return replaced


def check_cpu_4bit_shapes(model: torch.nn.Module, device: torch.device) -> None:
    """bitsandbytes' CPU 4-bit kernel packs weights in blocks of 64 input features: refuse other widths up front."""
    if device.type != "cpu":
        return
    widths = {structure.in_out_features(model.get_submodule(n))[0] for n in structure.of(model).projections}
    bad = sorted(w for w in widths if w % CPU_4BIT_BLOCK)
    if bad:
        raise PtqflowError(
            f"4-bit bitsandbytes on CPU needs every projection's input width to be a multiple of {CPU_4BIT_BLOCK} "
            f"(got {bad}); use a hidden size (and intermediate size) that is a multiple of 64, or run on CUDA"
        )


def _quantize_with(make_config, embeddings: str, src_dir: Path, out_dir: Path, search=None) -> dict:
    """Quantize with bitsandbytes, then the embedding tables by `embeddings`, or by the mode `search(model, fp_model)`
    chooses (returning (mode, record)) for `auto`."""
    from transformers import AutoModelForSequenceClassification

    fp_model = load_finetuned(src_dir)
    found = structure.of(fp_model)
    expected = len(found.projections)
    device = runtime_device()
    config = make_config(list(found.head))
    if config.load_in_4bit:
        check_cpu_4bit_shapes(fp_model, device)
    model = AutoModelForSequenceClassification.from_pretrained(str(src_dir), quantization_config=config, device_map=device.type)
    replaced = check_replaced(model, expected)
    n_parameters = model.num_parameters()
    tables = embedding_names(model)
    searched = {}
    if embeddings == "auto":
        chosen, searched["embedding_search"] = search(model, fp_model)
        embeddings = chosen or "keep"
    emb = quantize_embeddings(model, embeddings, _float_dtype(model))
    model.save_pretrained(str(out_dir))  # the quantized embeddings' buffers (codes, scale) replace the tables' weights
    if emb and set(emb) - set(_stored_embeddings(out_dir, torch.device("cpu"), tables)):
        raise PtqflowError(f"{out_dir}: save_pretrained did not store the quantized embeddings")
    kept = ["norms", *found.head] + ([] if emb else tables)
    return {
        "quantized_modules": replaced,
        "conv1d_projections": len(found.conv1d),
        "quantized_embeddings": len(emb) // 2,
        "kept_full_precision": kept,
        "quantized_on": device.type,
        "n_parameters": n_parameters,
        "embeddings": embeddings,
        **searched,
    }


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype bitsandbytes left the float parts of the model in (the input embedding's)."""
    return model.get_input_embeddings().weight.dtype


def load_quantized(artifact_dir: Path, embeddings: EmbeddingMode, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    quiet = _quiet_transformers() if embeddings != "keep" else contextlib.nullcontext()
    with quiet:  # the embeddings are not in the bitsandbytes checkpoint: transformers would warn they are "newly initialized"
        model = AutoModelForSequenceClassification.from_pretrained(str(artifact_dir), device_map=device.type)
    if embeddings != "keep":
        tables = embedding_names(model)
        dtype = _float_dtype(model)
        attach_embeddings(model, embeddings, _stored_embeddings(artifact_dir, device, tables), dtype)
        if count_quantized_embeddings(model) != len(tables):
            raise PtqflowError(f"{artifact_dir}: the quantized embeddings were not attached")
    check_replaced(model, len(structure.of(model).projections), str(artifact_dir))
    return model


def _stored_embeddings(artifact_dir: Path, device: torch.device, tables: list[str]) -> dict[str, torch.Tensor]:
    """The quantized-embedding tensors (codes and scales of `tables`) stored in the artifact's weight files."""
    keys = {f"{t}.{part}" for t in tables for part in ("codes", "scale")}
    tensors: dict[str, torch.Tensor] = {}
    for path in artifact_dir.glob("*.safetensors"):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys() if k in keys})
    return tensors


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def quantize_int8(src_dir: Path, out_dir: Path, options: Int8BnbOptions) -> dict:
    info = _quantize_with(lambda head: int8_config(options, head), options.embeddings, src_dir, out_dir)
    rt = "int8 weights; LLM.int8 matmul on float16-cast activations, outlier columns in float16"
    return {"runtime_dtype": f"{rt}; {describe(options.embeddings)}", **info}


def quantize_nf4(src_dir: Path, out_dir: Path, options: Nf4BnbOptions, calibration: Calibration | None = None) -> dict:
    search = (lambda model, fp_model: _embedding_search(model, fp_model, calibration, options)) if options.embeddings == "auto" else None
    info = _quantize_with(lambda head: nf4_config(options, head), options.embeddings, src_dir, out_dir, search)
    return {"runtime_dtype": f"{options.quant_type} weights, {options.compute_dtype} compute; {describe(info['embeddings'])}", **info}


def _embedding_search(model: torch.nn.Module, fp_model: torch.nn.Module, calibration: Calibration, options: Nf4BnbOptions):
    """(the fewest-bits embedding mode that fits the budget, or None; the search's record): module docstring."""
    import time

    from .. import sensitivity as sens
    from .embedding import QuantizedEmbedding

    started = time.perf_counter()
    device = next(model.parameters()).device
    batches, labels = calibration.scoring_batches(len(calibration.rows))
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    base_right = (sens.logits_on(fp_model.to(device), batches).argmax(-1).cpu() == labels).numpy()
    originals = {n: model.get_submodule(n) for n in embedding_names(model)}
    dtype = _float_dtype(model)

    def right(mode: str):
        sens.swap(model, {n: QuantizedEmbedding.from_float(m.weight, mode, dtype) for n, m in originals.items()})
        try:
            return (sens.logits_on(model, batches).argmax(-1).cpu() == labels).numpy()
        finally:
            sens.swap(model, originals)

    record = sens.smallest_fitting(["int2", "int3", "int4"], right, base_right, options.max_drop, options.budget_confidence)
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record["chosen"], record


def load(artifact_dir: Path, options, device: torch.device) -> torch.nn.Module:
    # LLM.int8 warns on every forward that it casts float32 activations to float16; runtime_dtype says so once.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    mode = options.embeddings
    if mode == "auto":  # what the size search chose, recorded in the artifact
        from ..io import read_json
        from .registry import META_FILE

        mode = read_json(artifact_dir / META_FILE).get("embeddings", "keep")
    return load_quantized(artifact_dir, mode, device)


INT8 = Scheme("bnb_int8", Int8BnbOptions, quantize_int8, load, "bitsandbytes LLM.int8 on the body's projections")
NF4 = Scheme("bnb_nf4", Nf4BnbOptions, quantize_nf4, load, "bitsandbytes 4-bit NF4 with double quantization",
             calibrates=lambda options: options.embeddings == "auto")
