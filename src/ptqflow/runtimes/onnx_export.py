"""Export a fine-tuned classifier to ONNX, optionally fuse transformer subgraphs, and check parity with PyTorch.

The exported graph is `logits = f(input_ids, attention_mask[, token_type_ids])` with dynamic batch and sequence
axes, whatever the architecture (the model's own `forward`, wrapped so that only the logits come out and no
key/value cache is built). Weights are stored beside the graph as external data (`model.onnx.data`).

Parity: on `PARITY_ROWS` seeded rows of a batch and length other than the export example (some rows
right-padded), d = max_{i,c} |logits_ort[i, c] - logits_torch[i, c]|; above `parity_tolerance` the export
stops with that number, since every ORT variant is built on this graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import check
from ..errors import PtqflowError, VariantSkipped
from ..structure import expect, of, position_limit, uses_token_types

GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
EXAMPLE_SHAPE = (2, 16)  # batch, sequence of the export example (both axes stay dynamic)
PARITY_SHAPE = (3, 24)  # another shape: parity also checks the axes are dynamic
PARITY_ROWS_SEED = 0


@dataclass
class ExportOptions:
    """How the graph is made; every ORT scheme's options start with these."""

    exporter: Literal["dynamo", "torchscript"] = "dynamo"  # torch.onnx.export(dynamo=True) or the TorchScript exporter
    opset: int = 18
    attention: Literal["auto", "sdpa", "eager"] = "auto"  # traced into the graph; auto: sdpa where the architecture has it
    fusions: Literal["none", "transformer"] = "none"  # transformer: onnxruntime.transformers fusions before quantizing
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"  # session level when the model runs
    parity_tolerance: float = 1e-3  # max |logits difference| ORT fp32 vs PyTorch fp32 at export

    def __post_init__(self) -> None:
        low = 18 if self.exporter == "dynamo" else 14
        check(low <= self.opset <= 23, "opset", f"an integer in [{low}, 23] for the {self.exporter} exporter", self.opset)
        check(0 < self.parity_tolerance < 1, "parity_tolerance", "a number in (0, 1)", self.parity_tolerance)



class _LogitsOnly(torch.nn.Module):
    """forward(input_ids, attention_mask[, token_type_ids]) -> logits: the signature every variant runs with."""

    def __init__(self, model: torch.nn.Module, token_types: bool):
        super().__init__()
        self.model, self.token_types = model, token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.token_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits


def input_names(config) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types(config) else [])


def numpy_feeds(batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, np.ndarray]:
    """The exported graph's inputs `names` from a batch, as int64 numpy arrays: a missing attention mask is all
    ones and missing token types are zeros (the signature every exported runtime runs with)."""
    ids = batch["input_ids"]
    defaults = {"attention_mask": torch.ones_like, "token_type_ids": torch.zeros_like}
    return {n: (batch[n] if batch.get(n) is not None else defaults[n](ids)).detach().cpu().numpy().astype(np.int64, copy=False)
            for n in names}


def sample_inputs(config, shape: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """Seeded token ids of `shape`; every other row right-padded to half length (the mask says so)."""
    batch, length = shape
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(config.vocab_size), (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1::2, length // 2 :] = 0
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, config.pad_token_id or 0))
    feeds = {"input_ids": ids, "attention_mask": mask}
    if uses_token_types(config):
        types = torch.zeros_like(ids)
        types[:, length // 4 : length // 2] = 1
        feeds["token_type_ids"] = types
    return feeds


def attention_for(src_dir: Path, wanted: str) -> str:
    """The attention implementation to trace: `wanted`, or for `auto` SDPA where the architecture's transformers
    class implements it (`_supports_sdpa`) and eager where it does not (e.g. DeBERTa-v2, MPNet, XLNet)."""
    if wanted != "auto":
        return wanted
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(src_dir))
    try:
        cls = AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        raise PtqflowError(f"{src_dir}: {config.model_type} has no sequence-classification class in transformers") from None
    return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"


def load_for_export(src_dir: Path, attention: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(src_dir), dtype=torch.float32, attn_implementation=attention)
    except ValueError as exc:  # an architecture without that attention implementation
        raise PtqflowError(f"{src_dir}: cannot load with attention={attention!r} ({str(exc).splitlines()[0]})") from None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # else the outputs hold a key/value cache
    return model.eval()


def export_onnx(src_dir: Path, out_dir: Path, options: ExportOptions) -> dict:
    """Write `out_dir/model.onnx` (+ external data) from the fine-tuned model in `src_dir`; returns what was done:
    exporter, opset, fused operators, parity with PyTorch, and the model's projections + head (the weight
    matrix products a quantizer should find)."""
    attention = attention_for(src_dir, options.attention)
    model = load_for_export(src_dir, attention)
    config = model.config
    limit = position_limit(config)
    if limit is not None and limit < PARITY_SHAPE[1]:
        raise PtqflowError(f"{src_dir}: the model has {limit} positions; export needs at least {PARITY_SHAPE[1]}")
    wrapper = _LogitsOnly(model, uses_token_types(config)).eval()
    names = input_names(config)
    example = sample_inputs(config, EXAMPLE_SHAPE, seed=1)
    args = tuple(example[n] for n in names)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = out_dir / GRAPH_FILE
    with quiet(), torch.inference_mode(False), torch.no_grad():
        try:
            if options.exporter == "dynamo":
                dim = torch.export.Dim.DYNAMIC
                torch.onnx.export(wrapper, args, str(graph), dynamo=True, opset_version=options.opset, input_names=names,
                                  output_names=["logits"], dynamic_shapes={n: {0: dim, 1: dim} for n in names},
                                  external_data=True, verbose=False)
            else:
                axes = {n: {0: "batch", 1: "sequence"} for n in names}
                torch.onnx.export(wrapper, args, str(graph), dynamo=False, opset_version=options.opset, input_names=names,
                                  output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}})
        except Exception as exc:  # noqa: BLE001 - exporters raise many types; one line says which model and why
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise VariantSkipped(f"ONNX export ({options.exporter}, opset {options.opset}) of {config.model_type} failed: {first}") from None
    fused = _fuse(graph) if options.fusions == "transformer" else {}
    _resave(graph)
    parity = parity_check(model, graph, options.parity_tolerance)
    structure = of(model)
    proto = _graph(graph).graph
    products = weight_products(proto)
    if not fused.get("Attention") and not fused.get("MultiHeadAttention"):  # else some projections live in Attention
        expect(sum(products.values()), len(structure.projections) + len(structure.head),
               "weight matrix products (MatMul / Gemm with a constant weight) in the ONNX graph",
               f"{config.model_type} export (projections + head)")
    return {
        "onnx": {"exporter": options.exporter, "opset": options.opset, "attention": attention,
                 "fusions": options.fusions, "fused_operators": fused, "inputs": names, "weight_matmuls": products,
                 "operators": dict(Counter(n.op_type for n in proto.node).most_common())},
        "parity_max_abs_diff": parity,
        "n_parameters": model.num_parameters(),
    }


def weight_products(graph) -> dict[str, int]:
    """{MatMul | Gemm: how many multiply by a constant weight (an initializer as second input)}."""
    inits = {i.name for i in graph.initializer}
    found = Counter(n.op_type for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits)
    return {op: found.get(op, 0) for op in ("MatMul", "Gemm")}


def _graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _resave(graph: Path) -> None:
    """Rewrite the graph with all weights in one external data file and without the exporter's stale
    intermediate shapes (`value_info`), which ORT's quantizer re-infers and can reject."""
    import onnx

    model = onnx.load(str(graph))
    del model.graph.value_info[:]
    for stale in graph.parent.glob("*.data"):
        stale.unlink()
    onnx.save(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE,
              size_threshold=1024)


def _fuse(graph: Path) -> dict:
    """onnxruntime.transformers fusions (LayerNorm / SkipLayerNorm, Gelu / FastGelu / BiasGelu, Attention where its
    pattern matches) with the architecture-agnostic optimizer; heads and width are read from the graph.
    Returns {fused operator: count} (zeros left out)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet():
        optimized = optimize_model(str(graph), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(graph), use_external_data_format=True, all_tensors_to_one_file=True)
    return stats


def parity_check(model: torch.nn.Module, graph: Path, tolerance: float) -> float:
    """Max |logits| difference of ONNX Runtime (CPU, fp32) and PyTorch on seeded rows; PtqflowError above `tolerance`."""
    import onnxruntime as ort

    feeds = sample_inputs(model.config, PARITY_SHAPE, PARITY_ROWS_SEED)
    names = input_names(model.config)
    with torch.no_grad():
        ref = _LogitsOnly(model, uses_token_types(model.config))(*(feeds[n] for n in names)).numpy()
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {n: feeds[n].numpy() for n in names})[0]
    diff = float(np.abs(got - ref).max())
    if not diff <= tolerance:
        raise PtqflowError(f"{graph}: ONNX Runtime logits differ from PyTorch by {diff:.3g} > parity_tolerance {tolerance:g}; "
                           "the export is not faithful (try exporter: torchscript or attention: eager)")
    return diff


@contextlib.contextmanager
def quiet():
    """The exporters and the optimizer print progress and deprecation notes on every call; keep the stage's
    console to its own lines (errors still raise)."""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "onnxruntime", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
