"""Build the classifier for any architecture: `AutoConfig` decides it, `AutoModelForSequenceClassification`
builds it (fresh weights from `model.base`'s config, or `from_pretrained(model.pretrained)`), `AutoTokenizer`
reads the tokenizer. No architecture is named here; model structure lives in structure.py.

Checked before any work, each a one-line error: a `model_type` with no sequence-classification class; an
unknown `model.overrides` key (the architecture's own config fields, with the close matches); a tokenizer
with more tokens than the config's `vocab_size`; no pad token and no EOS to pad with; `data.max_length`
beyond the architecture's position table. A tokenizer without a pad token (GPT-2, Llama) pads with EOS,
set on tokenizer and model config in `configure_padding`, this one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import difflib
from pathlib import Path

import torch

from .config import ModelParams
from .errors import PtqflowError

if TYPE_CHECKING:  # transformers is imported where it is used: `pick_device` alone should not pay for it
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

HUB_HINT = (
    "the Hugging Face Hub is not reachable from here; set model.init: scratch in params.yaml "
    "(the architecture built from model.base's config with fresh weights), or point model.pretrained at a local "
    "folder that holds config.json and model.safetensors"
)


def load_tokenizer(base: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer from the base folder (or Hub id), with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(base))
    except (OSError, ValueError) as exc:
        raise PtqflowError(f"cannot load the tokenizer from {base}: run `ptqflow assets` first ({_first_line(exc)})") from None
    configure_padding(tok, where=str(base))
    return tok


def configure_padding(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module | None = None, where: str = "") -> None:
    """No pad token (GPT-2, Llama): pad with EOS, on the tokenizer and on the model's config. Right padding
    for every architecture (structure.py says why)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PtqflowError(f"the tokenizer{' at ' + where if where else ''} has no pad token and no EOS token to pad "
                               "with; give it a pad token (tokenizer_config.json: pad_token)")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_config(params: ModelParams) -> PretrainedConfig:
    """The architecture's config: `model.base` (scratch, with `model.overrides`) or `model.pretrained`."""
    from transformers import AutoConfig

    source = params.base if params.init == "scratch" else params.pretrained
    if params.init != "scratch" and not Path(source).exists():
        from .assets import require_hub

        require_hub(f"model.pretrained {source!r}", HUB_HINT.split("; ", 1)[1])
    try:
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as exc:
        hint = "run `ptqflow assets` first" if params.init == "scratch" else "a Hub id or a folder with config.json"
        raise PtqflowError(f"cannot load the model config from {source}: {hint} ({_first_line(exc)})") from None
    check_classifiable(config, source)
    if params.init == "scratch":
        apply_overrides(config, params.overrides)
    return config


def check_classifiable(config: PretrainedConfig, where: str = "") -> None:
    """A model_type that transformers has no *ForSequenceClassification class for stops here."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as CLASSES

    if config.model_type not in CLASSES:
        raise PtqflowError(f"{where}: model_type {config.model_type!r} has no sequence-classification class in "
                           f"transformers (e.g. {', '.join(sorted(CLASSES)[:8])}, ...)")


def config_fields(config: PretrainedConfig) -> list[str]:
    """The fields a config of this architecture has: its own, and the canonical aliases it maps (attribute_map)."""
    return sorted(set(config.to_dict()) | set(getattr(config, "attribute_map", {})))


def apply_overrides(config: PretrainedConfig, overrides: dict) -> None:
    """Set `model.overrides` on the config; an unknown field stops with the close matches of this architecture."""
    fields = config_fields(config)
    for key, value in overrides.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise PtqflowError(f"params.yaml: model.overrides.{key} is not a field of the {config.model_type} config{hint}")
        setattr(config, key, value)
    heads, width = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if isinstance(heads, int) and isinstance(width, int) and heads and width % heads:
        raise PtqflowError(f"params.yaml: model.overrides: the hidden size ({width}) must be a multiple of the "
                           f"number of attention heads ({heads})")


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> None:
    if len(tokenizer) > config.vocab_size:
        raise PtqflowError(f"the tokenizer has {len(tokenizer)} tokens but the {config.model_type} config's vocab_size is "
                           f"{config.vocab_size}: token ids would index past the embedding table (set model.overrides.vocab_size "
                           f"or use the model's own tokenizer)")


def check_max_length(config: PretrainedConfig, max_length: int) -> None:
    from .structure import position_limit

    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise PtqflowError(f"params.yaml: data.max_length {max_length} exceeds the {config.model_type} model's {limit} positions")


def tokenizer_source(params: ModelParams) -> str:
    """The loaded model's own tokenizer (init: pretrained or finetuned), else the one beside the config in model.base."""
    return params.base if params.init == "scratch" else params.pretrained


def checked_tokenizer(params: ModelParams, max_length: int) -> PreTrainedTokenizerBase:
    """The tokenizer, after checking it and data.max_length against the architecture's config."""
    config = load_config(params)  # first: offline, a Hub id stops here with how to go on
    tokenizer = load_tokenizer(tokenizer_source(params))
    check_tokenizer(tokenizer, config)
    check_max_length(config, max_length)
    return tokenizer


def build_model(params: ModelParams, classes: list[str], pad_token_id: int) -> torch.nn.Module:
    """An AutoModelForSequenceClassification with len(classes) labels: fresh weights from the config (scratch)
    or `from_pretrained(params.pretrained)` (Hub id or local folder; the head freshly initialised)."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(params)
    config.num_labels = len(classes)
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: i for i, c in enumerate(classes)}
    config.pad_token_id = pad_token_id
    if params.init == "scratch":
        return AutoModelForSequenceClassification.from_config(config)
    try:
        return AutoModelForSequenceClassification.from_pretrained(params.pretrained, config=config)
    except OSError as exc:
        if Path(params.pretrained).exists():
            raise PtqflowError(f"cannot load pretrained weights from {params.pretrained}: {_first_line(exc)}") from None
        raise PtqflowError(f"cannot load pretrained weights {params.pretrained!r}: {HUB_HINT}") from None


def trained_labels(params: ModelParams) -> list[str] | None:
    """A model used as given (init: finetuned): its class names in output order (config.id2label), which the data's
    are matched to (labels.py). None for a model the `finetune` stage trains (its head takes the data's classes)."""
    if params.trains:
        return None
    from .labels import model_labels

    return model_labels(load_config(params))


def load_given(params: ModelParams, pad_token_id: int | None) -> torch.nn.Module:
    """A trained classifier as it is (init: finetuned): `from_pretrained(model.pretrained)` with its own config and
    head. A decoder without a pad token id gets the tokenizer's (EOS), the only change, so batches can be padded."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(params)
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(params.pretrained, config=config,
                                                                         output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise PtqflowError(f"cannot load the trained classifier from {params.pretrained}: {_first_line(exc)}") from None
    from .structure import of

    head = of(model).head
    untrained = [k for k in info.get("missing_keys", []) if any(k == h or k.startswith(h + ".") for h in head)]
    if untrained:
        raise PtqflowError(f"{params.pretrained} has no trained classification head ({', '.join(sorted(untrained))} not in its "
                           "weights): model.init: finetuned takes a trained classifier; use model.init: pretrained to fine-tune it")
    return model


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or requested), else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise PtqflowError("device 'cuda' requested but CUDA is not available on this machine")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
