"""Tiny configs of each supported family, built from scratch (no Hub): GPT-2 (Conv1D, learned positions),
BERT (encoder, token types, pooler), Llama (RMSNorm, rotary, grouped-query attention, nn.Linear). All use
the shared GPT-2 tokenizer (vocab_size 50257); widths are multiples of 64 (bitsandbytes' CPU 4-bit kernel)."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")

# family -> (config class name, fields); projections in the body: GPT-2 4/layer, BERT 6/layer + pooler, Llama 7/layer
FAMILIES = {
    "gpt2": ("GPT2Config", {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64}),
    "bert": ("BertConfig", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                            "max_position_embeddings": 64}),
    "llama": ("LlamaConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "max_position_embeddings": 64}),
}
PROJECTIONS = {"gpt2": 8, "bert": 13, "llama": 14}
EMBEDDING_TABLES = {"gpt2": 2, "bert": 3, "llama": 1}


def make_base(family: str, gpt2_dir: Path, out: Path, **extra) -> Path:
    """A `model.base` folder: the family's tiny config.json beside the shared GPT-2 tokenizer."""
    import transformers

    cls_name, fields = FAMILIES[family]
    config = getattr(transformers, cls_name)(vocab_size=50257, **{**fields, **extra})
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (gpt2_dir / name).is_file():
            shutil.copy(gpt2_dir / name, out / name)
    return out


def random_calibration():
    """24 seeded random rows of 16 token ids: what a calibrating scheme fits on when a test has no data at hand."""
    from ptqflow.calibration import random_rows

    return random_rows(24, 16, 1000, pad_id=0)
