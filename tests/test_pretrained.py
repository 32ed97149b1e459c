"""Pretrained models: `init: pretrained` from a local folder with its own tokenizer, carried through to the package
and `ptqflow predict`; the shared all-MiniLM-L6-v2 checkpoint loads with every body weight as stored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import SHARED
from .pipeline_project import make_project, run_in_process, stage_commands

MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
BERT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_pretrained_bert(out: Path) -> Path:
    """A 'pretrained' folder as from_pretrained reads it: a tiny BERT (vocabulary 30,522, WordPiece) with saved
    weights and the all-MiniLM-L6-v2 tokenizer files beside them (a few hundred KB, not the checkpoint)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(str(out))
    for name in BERT_TOKENIZER_FILES:
        shutil.copy(MINILM / name, out / name)
    return out


@pytest.mark.skipif(not (MINILM / "vocab.txt").is_file(), reason=f"no all-MiniLM-L6-v2 tokenizer at {MINILM}")
def test_package_and_predict_use_the_pretrained_models_own_tokenizer(tmp_path, shared):
    """init: pretrained with a WordPiece tokenizer (not GPT-2's): every stage, package included, then `ptqflow
    predict`'s loader. The packaged tokenizer is the model's (the GPT-2 one fed ids past its 30,522 rows)."""
    from ptqflow.predict import load_packaged

    env = make_project(tmp_path, shared, ["fp32", "int8_dynamic"])
    env["PTQFLOW_TRACKING"] = "0"
    folder = tiny_pretrained_bert(tmp_path / "models" / "tiny-pretrained")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["model"].update(init="pretrained", pretrained="models/tiny-pretrained", overrides={})
    params["train"].update(lr=1e-3, freeze_input_embeddings=True)
    params["package"].update(registered_model=None, variant="int8_dynamic")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_in_process(tmp_path, env, stage_commands(tmp_path, skip=()))
    assert "package: int8_dynamic" in out
    from transformers import AutoTokenizer

    packaged = tmp_path / "models" / "recommended"
    shipped = AutoTokenizer.from_pretrained(str(packaged / "tokenizer"))
    assert shipped.get_vocab() == AutoTokenizer.from_pretrained(str(folder)).get_vocab()  # WordPiece, 30,522 entries
    assert len(shipped) == 30522 and "[CLS]" in shipped.get_vocab()  # not the GPT-2 tokenizer of model.base
    train = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert train["n_trained_parameters"] == train["n_parameters"] - 30522 * 64  # the token table stayed as loaded
    model = load_packaged(packaged)
    ids = model.tokenizer(["Stocks rallied"])["input_ids"][0]
    assert ids[0] == model.tokenizer.cls_token_id and max(ids) < 30522
    labels = model.predict(["Stocks rallied after the central bank held rates", "The team won the cup final"])
    assert set(labels) <= {"World", "Sports", "Business", "Sci/Tech"} and len(labels) == 2


def test_freezing_embeddings_of_a_scratch_model_is_one_line(tmp_path, tiny_prepared, tiny_model_params):
    from ptqflow.config import TrainParams
    from ptqflow.errors import PtqflowError
    from ptqflow.train import finetune

    with pytest.raises(PtqflowError, match="freeze_input_embeddings / freeze_layers need model.init: pretrained"):
        finetune(tiny_model_params, TrainParams(epochs=1, freeze_input_embeddings=True, device="cpu"), tiny_prepared,
                 tmp_path / "m", tmp_path / "c")
    assert not (tmp_path / "m").exists()


@pytest.mark.checkpoint
@pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(), reason=f"no pretrained checkpoint at {MINILM}")
def test_the_shared_pretrained_checkpoint_loads_every_body_weight(tmp_path):
    """The one test that reads the 90 MB checkpoint: from_pretrained through ptqflow's model builder, one forward
    pass, and every tensor of the checkpoint in the model unchanged (only the classifier head is new)."""
    import torch
    from safetensors.torch import load_file

    from ptqflow.config import ModelParams
    from ptqflow.modeling import build_model, checked_tokenizer

    params = ModelParams(init="pretrained", pretrained=str(MINILM))
    tokenizer = checked_tokenizer(params, 128)
    model = build_model(params, ["a", "b", "c", "d"], tokenizer.pad_token_id).eval()
    stored = load_file(str(MINILM / "model.safetensors"))
    state = model.state_dict()
    prefix = model.base_model_prefix + "."
    compared = 0
    for key, tensor in stored.items():
        name = key if key.startswith(prefix) else prefix + key
        if name not in state:  # e.g. position_ids buffers that transformers no longer stores
            continue
        assert torch.equal(state[name], tensor), f"{name} was re-initialised"
        compared += 1
    assert compared >= 100  # 6 layers x 16 tensors + embeddings + pooler
    new = sorted(k for k in state if not k.startswith(prefix))
    assert new == ["classifier.bias", "classifier.weight"]
    batch = tokenizer(["Stocks rallied after the central bank held rates"], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()
