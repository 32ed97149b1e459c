"""bitsandbytes LLM.int8 and NF4 through transformers, on GPT-2's Conv1D projections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ptqflow.errors import PtqflowError
from ptqflow.quantize import load_variant, quantize_variant
from ptqflow.quantize.bnb import bnb_module_types

VARIANTS = {
    "int8_bnb": {"scheme": "bnb_int8", "llm_int8_threshold": 6.0},
    "nf4_bnb": {"scheme": "bnb_nf4", "compute_dtype": "float32", "double_quant": True, "quant_type": "nf4"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_projection_becomes_bitsandbytes_and_the_head_stays_fp(tmp_path, variant, tiny_trained, tiny_prepared):
    raw = VARIANTS[variant]
    meta = quantize_variant(variant, raw, tiny_trained, tmp_path / variant)
    assert meta["quantized_modules"] == meta["conv1d_projections"] == 4 * 2
    saved = json.loads((tmp_path / variant / "config.json").read_text())["quantization_config"]
    assert saved["llm_int8_skip_modules"] == ["score"]

    model, _ = load_variant(variant, raw, tmp_path / variant, torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, bnb_module_types())]
    assert len(layers) == 8
    assert not isinstance(model.score, bnb_module_types()) and model.score.weight.dtype == torch.float32

    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    quantize_variant("fp32", {"scheme": "fp32"}, tiny_trained, tmp_path / "fp32")
    params = EvalParams(device="cpu")
    _, p_fp = evaluate_variant("fp32", {"scheme": "fp32"}, tmp_path / "fp32", tiny_prepared, params)
    m, p_q = evaluate_variant(variant, raw, tmp_path / variant, tiny_prepared, params)
    assert np.mean(p_fp["predicted"].to_numpy() == p_q["predicted"].to_numpy()) >= 0.9
    assert m["memory_footprint"]["bytes"] > 0 and m["size_on_disk"]["bytes"] > 0
    assert m["quantization"]["quantized_modules"] == 8


def test_artifact_made_with_other_options_is_refused(tmp_path, tiny_trained):
    quantize_variant("int8_bnb", VARIANTS["int8_bnb"], tiny_trained, tmp_path / "q")
    with pytest.raises(PtqflowError, match="artifact was made as"):
        load_variant("int8_bnb", {"scheme": "bnb_int8", "llm_int8_threshold": 0.0}, tmp_path / "q", torch.device("cpu"))
    with pytest.raises(PtqflowError, match="artifact was made as"):
        load_variant("int8_bnb", {"scheme": "bnb_nf4"}, tmp_path / "q", torch.device("cpu"))


@pytest.mark.gpu
def test_nf4_runs_on_cuda(tmp_path, tiny_trained):
    meta = quantize_variant("nf4_bnb", VARIANTS["nf4_bnb"], tiny_trained, tmp_path / "q")
    assert meta["quantized_on"] == "cuda"
    model, _ = load_variant("nf4_bnb", VARIANTS["nf4_bnb"], tmp_path / "q", torch.device("cuda"))
    out = model(input_ids=torch.ones(2, 8, dtype=torch.long, device="cuda")).logits
    assert out.shape == (2, 4)


def test_nf4_on_cpu_refuses_widths_its_kernel_cannot_pack(tmp_path, tiny_prepared, shared):
    from ptqflow.config import ModelParams, TrainParams
    from ptqflow.train import finetune

    from .conftest import GPT2

    narrow = ModelParams(base=str(GPT2), overrides={"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64})
    finetune(narrow, TrainParams(epochs=0.05, device="cpu"), tiny_prepared, tmp_path / "m", tmp_path / "c")
    with pytest.raises(PtqflowError, match="multiple of 64"):
        quantize_variant("nf4_bnb", VARIANTS["nf4_bnb"], tmp_path / "m", tmp_path / "q")
    assert not (tmp_path / "q").exists()
