"""Build the classifier: GPT-2 with a sequence-classification head, from scratch or pretrained.

GPT-2 has no pad token; `configure_padding` sets pad = EOS on tokenizer and model config, in this one place.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GPT2ForSequenceClassification, PreTrainedTokenizerBase

from .config import ModelParams
from .errors import PtqflowError

HUB_HINT = (
    "the Hugging Face Hub is not reachable from here; set model.init: scratch in params.yaml "
    "(GPT-2 built from models/base/gpt2 with fresh weights), or point model.pretrained at a local folder "
    "that holds config.json and model.safetensors"
)


def load_tokenizer(base: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer from the base folder (or Hub id), with pad = EOS."""
    try:
        tok = AutoTokenizer.from_pretrained(str(base))
    except OSError as exc:
        raise PtqflowError(f"cannot load the tokenizer from {base}: run `ptqflow assets` first ({_first_line(exc)})") from None
    configure_padding(tok)
    return tok


def configure_padding(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module | None = None) -> None:
    """GPT-2 has no pad token: use EOS for padding, on the tokenizer and on the model's config."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def build_model(params: ModelParams, classes: list[str], pad_token_id: int) -> GPT2ForSequenceClassification:
    """GPT2ForSequenceClassification with len(classes) labels.

    init=scratch: the architecture config from `params.base`, with `params.overrides`, fresh weights.
    init=pretrained: `from_pretrained(params.pretrained)` (Hub id or local folder), head freshly initialised.
    """
    labels = {"id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}}
    if params.init == "scratch":
        try:
            config = AutoConfig.from_pretrained(params.base, num_labels=len(classes), pad_token_id=pad_token_id, **labels)
        except OSError as exc:
            raise PtqflowError(f"cannot load the model config from {params.base}: run `ptqflow assets` first ({_first_line(exc)})") from None
        for key, value in params.overrides.items():
            setattr(config, key, value)
        if config.n_embd % config.n_head:
            raise PtqflowError(f"params.yaml: model.overrides: n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})")
        return GPT2ForSequenceClassification(config)
    if not Path(params.pretrained).exists():
        from .assets import require_hub

        require_hub(f"model.pretrained {params.pretrained!r}", HUB_HINT.split("; ", 1)[1])
    try:
        model = GPT2ForSequenceClassification.from_pretrained(
            params.pretrained, num_labels=len(classes), pad_token_id=pad_token_id, **labels
        )
    except OSError as exc:
        if Path(params.pretrained).exists():
            raise PtqflowError(f"cannot load pretrained weights from {params.pretrained}: {_first_line(exc)}") from None
        raise PtqflowError(f"cannot load pretrained weights {params.pretrained!r}: {HUB_HINT}") from None
    return model


def max_positions(params: ModelParams) -> int:
    """How many positions the configured model has (the upper bound for data.max_length)."""
    if params.init == "scratch" and "n_positions" in params.overrides:
        return params.overrides["n_positions"]
    try:
        return AutoConfig.from_pretrained(params.base).n_positions
    except OSError:
        return 1024


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or requested), else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise PtqflowError("device 'cuda' requested but CUDA is not available on this machine")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
