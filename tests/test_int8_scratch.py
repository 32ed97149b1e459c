"""The hand-written per-tensor affine INT8 quantizer (report section 2.4.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, GPT2ForSequenceClassification

from ptqflow.errors import PtqflowError
from ptqflow.quantize import quantize_variant
from ptqflow.quantize.int8_scratch import QMAX, QMIN, dequantize_tensor, quantize_state, quantize_tensor

from .conftest import GPT2

CASES = [
    ((64,), -1.0, 1.0),
    ((32, 48), -0.02, 0.05),  # typical weights
    ((7, 3, 5), 0.8, 1.2),  # range excludes 0 (layer-norm gains)
    ((100,), -5.0, -2.0),  # all negative
    ((50, 50), -3e37, 3e37),  # near float32's maximum: max - min overflows float32
    ((40,), -1e-20, 3e-20),  # tiny magnitudes
    ((1,), 0.3, 0.7),
]


@pytest.mark.parametrize("shape,lo,hi", CASES)
def test_codes_in_range_and_error_within_half_a_step(shape, lo, hi):
    gen = torch.Generator().manual_seed(0)
    w = (torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(torch.float32)
    q, scale, zp = quantize_tensor(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert int(q.min()) >= QMIN and int(q.max()) <= QMAX
    assert QMIN <= int(zp) <= QMAX
    w_deq = dequantize_tensor(q, scale, zp)
    err = (w.double() - w_deq.double()).abs()
    bound = scale.double() / 2 + w.double().abs() * torch.finfo(torch.float32).eps
    assert bool((err <= bound).all()), float((err - bound).max())


def test_zero_is_exact():
    w = torch.tensor([-0.3, 0.0, 0.9, 0.45])
    q, scale, zp = quantize_tensor(w)
    assert dequantize_tensor(q, scale, zp)[1].item() == 0.0


@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 3.0e38, 1e-30])
def test_constant_tensor_round_trips_exactly(value):
    w = torch.full((4, 5), value, dtype=torch.float32)
    q, scale, zp = quantize_tensor(w)
    assert float(scale) > 0
    assert torch.equal(dequantize_tensor(q, scale, zp), w)


def test_non_finite_tensor_is_rejected():
    with pytest.raises(PtqflowError, match="NaN or infinity"):
        quantize_tensor(torch.tensor([1.0, float("nan")]))


def test_gpt2_small_has_149_parameter_tensors_and_all_are_quantized():
    config = AutoConfig.from_pretrained(GPT2, num_labels=4)
    with torch.device("meta"):
        model = GPT2ForSequenceClassification(config)
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    assert len(names) == 149  # the report's count, classification head included
    small = GPT2ForSequenceClassification(AutoConfig.from_pretrained(GPT2, num_labels=4, n_layer=2, n_embd=32, n_head=2))
    state = quantize_state(small)
    assert [k for k in state if "::" not in k] == [n for n, _ in small.named_parameters()]
    assert len([k for k in state if "::" not in k]) == 2 + 12 * 2 + 2 + 1


def test_artifact_is_a_quarter_of_fp32_and_agrees_with_it(tmp_path, tiny_trained, tiny_prepared):
    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    fp = quantize_variant("fp32", {"scheme": "fp32"}, tiny_trained, tmp_path / "fp32")
    q8 = quantize_variant("int8_scratch", {"scheme": "int8_scratch"}, tiny_trained, tmp_path / "int8")
    assert q8["quantized_tensors"] == q8["parameter_tensors"] == 29
    fp_bytes = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    q8_bytes = (tmp_path / "int8" / "model.int8.safetensors").stat().st_size
    assert 3.9 <= fp_bytes / q8_bytes <= 4.05
    assert fp["runtime_dtype"] == "float32"

    params = EvalParams(device="cpu")
    m_fp, p_fp = evaluate_variant("fp32", {"scheme": "fp32"}, tmp_path / "fp32", tiny_prepared, params)
    m_q8, p_q8 = evaluate_variant("int8_scratch", {"scheme": "int8_scratch"}, tmp_path / "int8", tiny_prepared, params)
    agreement = float(np.mean(p_fp["predicted"].to_numpy() == p_q8["predicted"].to_numpy()))
    assert agreement >= 0.99
    assert m_fp["accuracy"] > 0.4  # the tiny model learned something (chance is 0.25)
    assert m_q8["runtime_dtype"].startswith("float32")
    assert m_q8["size_on_disk"]["bytes"] == q8_bytes


def test_damaged_artifact_is_detected(tmp_path, tiny_trained):
    from ptqflow.quantize import load_variant

    quantize_variant("int8_scratch", {"scheme": "int8_scratch"}, tiny_trained, tmp_path / "int8")
    path = tmp_path / "int8" / "model.int8.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PtqflowError, match="not a readable safetensors file"):
        load_variant("int8_scratch", {"scheme": "int8_scratch"}, tmp_path / "int8", torch.device("cpu"))
