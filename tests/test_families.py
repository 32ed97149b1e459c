"""Any Hugging Face sequence classifier: GPT-2, BERT and Llama tiny configs through structure, fine-tuning,
every CPU scheme (counted against the structure) and evaluation; sentence pairs; one-line bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ptqflow import structure
from ptqflow.config import DataParams, EvalParams, ModelParams, TrainParams
from ptqflow.errors import PtqflowError, VariantSkipped
from ptqflow.quantize import load_variant, quantize_variant, unavailable

from .conftest import AG_NEWS, GPT2
from .families import EMBEDDING_TABLES, FAMILIES, PROJECTIONS, make_base

CPU = torch.device("cpu")
SCHEMES = {
    "int8_scratch": {"scheme": "int8_scratch"},
    "int8_scratch_emb8": {"scheme": "int8_scratch", "embeddings": "int8"},
    "int8_dynamic": {"scheme": "int8_dynamic", "embeddings": "int8"},
    "int8_bnb": {"scheme": "bnb_int8"},
    "nf4_bnb_emb4": {"scheme": "bnb_nf4", "embeddings": "int4"},
    "int8_wo_ao": {"scheme": "torchao", "config": "int8_weight_only"},
    "bf16": {"scheme": "cast", "dtype": "bfloat16"},
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory, tiny_prepared, shared):
    """(family, fine-tuned model folder, its fp32 artifact) for a tiny config of each family."""
    from ptqflow.train import finetune

    family = request.param
    root = tmp_path_factory.mktemp(family)
    base = make_base(family, GPT2, root / "base")
    params = ModelParams(base=str(base), init="scratch")
    finetune(params, TrainParams(lr=3e-3, batch_size=16, epochs=2, device="cpu"), tiny_prepared, root / "model", root / "ckpt")
    quantize_variant("fp32", {"scheme": "fp32"}, root / "model", root / "fp32", CPU)
    return family, root


def test_structure_finds_projections_head_embeddings_and_pooling(trained):
    from ptqflow.quantize.common import load_finetuned

    family, root = trained
    found = structure.of(load_finetuned(root / "model"))
    assert len(found.projections) == PROJECTIONS[family] and len(found.embeddings) == EMBEDDING_TABLES[family]
    assert found.head == ({"gpt2": ("score",), "bert": ("classifier",), "llama": ("score",)}[family])
    assert found.pooling == ("first" if family == "bert" else "last")
    assert bool(found.conv1d) == (family == "gpt2")
    assert "input" in found.embeddings.values()


@pytest.mark.parametrize("variant", list(SCHEMES))
def test_every_scheme_runs_on_every_family_and_counts_what_it_quantized(trained, tiny_prepared, variant):
    from ptqflow.evaluate import evaluate_variant

    family, root = trained
    raw = SCHEMES[variant]
    meta = quantize_variant(variant, raw, root / "model", root / variant, CPU)
    why = unavailable(variant, raw, CPU)  # the stages' own decision (bf16 where this CPU emulates it)
    if why:
        assert meta["skipped"] == why
        with pytest.raises(VariantSkipped):
            load_variant(variant, raw, root / variant, CPU)
        return
    model, _ = load_variant(variant, raw, root / variant, CPU)
    found = structure.of(model)
    if "quantized_modules" in meta:
        assert meta["quantized_modules"] == PROJECTIONS[family]
    if raw.get("embeddings", "keep") != "keep":
        from ptqflow.quantize.embedding import count_quantized_embeddings

        assert count_quantized_embeddings(model) == EMBEDDING_TABLES[family]
    for name in found.head:  # the head stays in full precision
        assert model.get_submodule(name).weight.dtype in (torch.float32, torch.bfloat16) and type(model.get_submodule(name)) is torch.nn.Linear
    params = EvalParams(device="cpu", batch_size=64)
    m_fp, p_fp = evaluate_variant("fp32", {"scheme": "fp32"}, root / "fp32", tiny_prepared, params)
    m_q, p_q = evaluate_variant(variant, raw, root / variant, tiny_prepared, params)
    assert np.mean(p_fp["predicted"].to_numpy() == p_q["predicted"].to_numpy()) >= 0.85, (family, variant)
    assert m_q["test_rows"] == m_fp["test_rows"] and m_q["size_on_disk"]["bytes"] > 0


def test_sentence_pairs_reach_the_model_as_two_segments(tmp_path, tokenizer):
    """A small paraphrase-style dataset with a `text_pair` column: BERT gets token_type_ids 0 then 1."""
    from ptqflow.data import load_prepared, prepare
    from ptqflow.evaluate import evaluate_variant
    from ptqflow.train import finetune

    folder = tmp_path / "pairs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "car", "tree", "rain", "sun", "boat", "bird"]
    for split, n in (("train", 160), ("test", 40)):
        rows = []
        for _ in range(n):
            a = " ".join(rng.choice(words, 4))
            same = bool(rng.integers(0, 2))
            b = a if same else " ".join(rng.choice(words, 4))
            rows.append({"text": a, "second": b, "label": "same" if same else "different"})
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prepared = tmp_path / "prepared"
    details = prepare(DataParams(source=str(folder), max_length=24, text_pair="second"), tokenizer, prepared)
    assert details["text_pair"] == "second"
    data, meta = load_prepared(prepared)
    row = data["train"][0]
    types = row["token_type_ids"]
    assert types[0] == 0 and types[-1] == 1 and sorted(set(types)) == [0, 1]  # first segment, then the second
    base = make_base("bert", tokenizer.name_or_path and GPT2, tmp_path / "base")
    finetune(ModelParams(base=str(base)), TrainParams(lr=3e-3, batch_size=16, epochs=1, device="cpu"), prepared,
             tmp_path / "model", tmp_path / "ckpt")
    quantize_variant("fp32", {"scheme": "fp32"}, tmp_path / "model", tmp_path / "fp32", CPU)
    m, _ = evaluate_variant("fp32", {"scheme": "fp32"}, tmp_path / "fp32", prepared, EvalParams(device="cpu"))
    assert m["test_rows"] == 40 and set(m["per_class"]) == {"different", "same"}


def test_missing_text_pair_column_is_one_line(tmp_path, tokenizer):
    from ptqflow.data import prepare

    with pytest.raises(PtqflowError, match=r"no 'premise' column \(data.text_pair\)"):
        prepare(DataParams(source=str(AG_NEWS), text_pair="premise"), tokenizer, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_bad_model_input_is_one_line(tmp_path):
    from ptqflow.modeling import checked_tokenizer, load_config

    bert = make_base("bert", GPT2, tmp_path / "bert")
    with pytest.raises(PtqflowError, match="n_layer is not a field of the bert config.*num_hidden_layers"):
        load_config(ModelParams(base=str(bert), overrides={"n_layer": 2}))
    with pytest.raises(PtqflowError, match="tokenizer has 50257 tokens but the bert config's vocab_size is 1000"):
        checked_tokenizer(ModelParams(base=str(bert), overrides={"vocab_size": 1000}), 32)
    with pytest.raises(PtqflowError, match="data.max_length 128 exceeds the bert model's 64 positions"):
        checked_tokenizer(ModelParams(base=str(bert)), 128)
    llama = make_base("llama", GPT2, tmp_path / "llama")
    checked_tokenizer(ModelParams(base=str(llama)), 4096)  # rotary: no position table to exceed
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(PtqflowError, match="model_type 'vit' has no sequence-classification class"):
        load_config(ModelParams(base=str(vit)))


def test_a_tokenizer_without_pad_or_eos_is_one_line(tmp_path):
    from ptqflow.modeling import load_tokenizer

    base = make_base("llama", GPT2, tmp_path / "llama")
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.update(eos_token=None, pad_token=None, bos_token=None, unk_token=None)  # GPT-2's tokenizer defaults them otherwise
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    (base / "special_tokens_map.json").unlink(missing_ok=True)
    with pytest.raises(PtqflowError, match="no pad token and no EOS token"):
        load_tokenizer(base)
