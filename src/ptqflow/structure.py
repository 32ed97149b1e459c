"""The one place that knows model structure, for any Hugging Face sequence-classification model.

Every scheme asks this module instead of naming an architecture's parts:
- body: everything under `model.base_model` (`base_model_prefix`: `transformer` for GPT-2, `bert`, `model` for
  Llama). Its projections are every `nn.Linear` and every transformers `Conv1D` in it, in module order.
- head: the `nn.Linear` / `Conv1D` modules outside the body (GPT-2's and Llama's `score`, BERT's `classifier`):
  the classification head, always kept in full precision. Found through the model, not by a name.
- embedding tables: every `nn.Embedding` in the body; its role is `input` (`get_input_embeddings()`),
  `position` (as many rows as the config's `max_position_embeddings`), `token_type` (as many rows as
  `type_vocab_size`) or `other`. Rotary models (Llama) have no position table.
- pooling: encoders (architectures with a masked-LM head in transformers, e.g. BERT) classify from the first
  token ([CLS]); decoders (GPT-2, Llama) from the last non-pad token, which transformers finds from
  `pad_token_id` on either padding side. Every batch is right-padded: an encoder's first token stays at
  position 0 and a decoder with learned absolute positions (GPT-2) sees its tokens at unshifted positions.

Documented special cases, and the only ones:
- GPT-2's `Conv1D` computes y = x W + b with W stored [in, out] (an `nn.Linear` stores [out, in]):
  `weight_out_in` returns W^T for it, so schemes see every projection as [out, in].
- Decoders without a pad token get pad = EOS (`modeling.configure_padding`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import PtqflowError


def _conv1d() -> type:
    """transformers' Conv1D class, imported on first use (a stage that only reports a skip never needs it)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


@dataclass(frozen=True)
class Structure:
    model_type: str
    body_prefix: str
    projections: tuple[str, ...]  # body nn.Linear / Conv1D, module order
    conv1d: tuple[str, ...]  # the projections stored [in, out] (GPT-2's Conv1D)
    head: tuple[str, ...]  # nn.Linear / Conv1D outside the body: the classification head
    embeddings: dict[str, str]  # embedding table module name -> role (input, position, token_type, other)
    pooling: str  # "first" (encoder) or "last" (decoder)

    def summary(self) -> dict:
        return {"model_type": self.model_type, "projections": len(self.projections), "conv1d": len(self.conv1d),
                "head": list(self.head), "embeddings": dict(self.embeddings), "pooling": self.pooling}


def body_prefix(model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        raise PtqflowError(f"{type(model).__name__}: no base model (`base_model_prefix`); cannot tell the body from the head")
    return prefix


def of(model: nn.Module) -> Structure:
    """The structure of `model` (a transformers *ForSequenceClassification, quantized or not)."""
    prefix = body_prefix(model)
    inside = lambda name: name == prefix or name.startswith(prefix + ".")  # noqa: E731
    projections, conv1d, head, tables = [], [], [], {}
    config = model.config
    try:
        input_table = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        input_table = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, _conv1d())) or _is_quantized_projection(module):
            (projections if inside(name) else head).append(name)
            if isinstance(module, _conv1d()) and inside(name):
                conv1d.append(name)
        elif inside(name) and (isinstance(module, nn.Embedding) or _is_quantized_embedding(module)):
            tables[name] = _role(module, input_table, config)
    if not head:
        raise PtqflowError(f"{type(model).__name__}: no classification head found outside `{prefix}`")
    return Structure(config.model_type, prefix, tuple(projections), tuple(conv1d), tuple(head), tables, pooling_for(config))


def layers(model: nn.Module) -> nn.ModuleList:
    """The body's stack of transformer layers, in order (BERT's encoder.layer, GPT-2's h, Llama's layers): the
    first ModuleList in the body with one entry per `config.num_hidden_layers`."""
    body = getattr(model, body_prefix(model))
    count = getattr(model.config, "num_hidden_layers", None)
    for module in body.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise PtqflowError(f"{type(model).__name__}: no list of {count} transformer layers found in its body")


def _role(module: nn.Module, input_table: nn.Module | None, config) -> str:
    if module is input_table:
        return "input"
    rows = getattr(module, "num_embeddings", None)
    if rows is not None and rows == getattr(config, "max_position_embeddings", None):
        return "position"
    if rows is not None and rows == getattr(config, "type_vocab_size", None):
        return "token_type"
    return "other"


def _is_quantized_projection(module: nn.Module) -> bool:
    """ptqflow's own layers that replaced a projection (bitsandbytes' and torchao's stay nn.Linear subclasses)."""
    return getattr(module, "ptqflow_projection", False)


def _is_quantized_embedding(module: nn.Module) -> bool:
    return getattr(module, "ptqflow_embedding", False)


def uses_token_types(config) -> bool:
    """Whether the architecture embeds token types (segments; BERT). Others get no token_type_ids: GPT-2 would
    look them up in its token table."""
    return bool(getattr(config, "type_vocab_size", 0) or 0)


def pooling_for(config) -> str:
    """first: encoders (a masked-LM head exists for the architecture); last: decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "first" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "last"


def position_limit(config) -> int | None:
    """How many positions the architecture has a table for (None: rotary or relative, no hard table limit)."""
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None):
        return None
    if getattr(config, "rope_theta", None) is not None or getattr(config, "rope_parameters", None) is not None:
        return None  # rotary: no position table
    return getattr(config, "max_position_embeddings", None)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """A projection's weight as [out, in]: nn.Linear stores it so; GPT-2's Conv1D stores [in, out]."""
    return module.weight.t() if isinstance(module, _conv1d()) else module.weight


def in_out_features(module: nn.Module) -> tuple[int, int]:
    out_f, in_f = weight_out_in(module).shape
    return int(in_f), int(out_f)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every Conv1D (y = x W + b, W stored [in, out]) by the equal nn.Linear (weight W^T); returns their names."""
    names = list(of(model).conv1d)
    for name in names:
        conv = model.get_submodule(name)
        k, n = conv.weight.shape
        linear = nn.Linear(k, n, dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            linear.bias.copy_(conv.bias)
        replace_module(model, name, linear)
    return names


def expect(found: int, expected: int, what: str, where: str = "") -> None:
    """Count check: quantized modules against what the structure says should be there."""
    if found != expected:
        raise PtqflowError(f"{where + ': ' if where else ''}expected {expected} {what}, found {found}")
