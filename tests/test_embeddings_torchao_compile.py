"""Quantized embeddings, torchao schemes, variants that cannot run here (skipped, with the reason), torch.compile."""

from __future__ import annotations

import pytest
import torch

from ptqflow.sizes import memory_footprint
from ptqflow.errors import PtqflowError
from ptqflow.quantize import VariantSkipped, load_variant, quantize_variant
from ptqflow.quantize.common import weights_bytes
from ptqflow.quantize.embedding import GROUP, QuantizedEmbedding, quantize_groups_int4, quantize_rows_int8, unpack_int4


def _table(rows=50, dim=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, dim, generator=gen) * torch.logspace(-2, 0, rows)[:, None]
    t[7] = 0.0
    return t


def test_int8_rows_within_half_a_step():
    t = _table()
    q, s = quantize_rows_int8(t)
    assert q.dtype == torch.int8 and s.shape == (50,)
    assert bool(((t - q.float() * s[:, None]).abs() <= s[:, None] / 2 * (1 + 1e-6)).all())
    assert torch.equal(q[7], torch.zeros(64, dtype=torch.int8))


def test_int4_groups_pack_two_codes_per_byte_within_half_a_step():
    t = _table()
    packed, s = quantize_groups_int4(t)
    assert packed.dtype == torch.uint8 and packed.shape == (50, 32) and s.shape == (50, 64 // GROUP) and s.dtype == torch.float16
    q = unpack_int4(packed)
    assert int(q.abs().max()) <= 7
    step = s.float().repeat_interleave(GROUP, dim=1)
    assert bool(((t - q.float() * step).abs() <= step / 2 * (1 + 1e-3)).all())
    emb = QuantizedEmbedding("int4", packed, s, torch.float32)
    ids = torch.tensor([[3, 7, 49], [0, 0, 1]])
    torch.testing.assert_close(emb(ids), (q.float() * step)[ids])
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_groups_int4(torch.randn(4, 48))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_fewer_bit_groups_pack_a_bit_stream_within_half_a_step(bits):
    """int2 / int3 / int4: dim * bits / 8 bytes per row, codes within [-Q, Q], the int4 layout unchanged (low nibble =
    even column), lookups equal to the dequantized rows."""
    from ptqflow.quantize.embedding import pack, quantize_groups, unpack

    t = _table()
    packed, s = quantize_groups(t, bits)
    assert packed.shape == (50, 64 * bits // 8) and packed.dtype == torch.uint8
    q = unpack(packed, bits)
    assert int(q.abs().max()) == 2 ** (bits - 1) - 1
    step = s.float().repeat_interleave(GROUP, dim=1)
    assert bool(((t - q.float() * step).abs() <= step / 2 * (1 + 1e-3)).all())
    codes = torch.randint(0, 2**bits, (3, 64))
    assert torch.equal(unpack(pack(codes, bits), bits).to(torch.int64) + 2 ** (bits - 1), codes)
    if bits == 4:
        assert torch.equal(packed[:, 0] & 0x0F, (q[:, 0] + 8).to(torch.uint8))
    emb = QuantizedEmbedding(f"int{bits}", packed, s, torch.float32)
    ids = torch.tensor([[3, 7, 49], [0, 0, 1]])
    torch.testing.assert_close(emb(ids), (q.float() * step)[ids])


@pytest.mark.parametrize("raw", [
    {"scheme": "int8_scratch", "embeddings": "int4"},
    {"scheme": "bnb_nf4", "embeddings": "int4"},
    {"scheme": "bnb_int8", "embeddings": "int8"},
    {"scheme": "int8_dynamic", "embeddings": "int4"},
])
def test_embeddings_option_compresses_the_whole_model(tmp_path, tiny_trained, raw):
    fp32 = quantize_variant("fp32", {"scheme": "fp32"}, tiny_trained, tmp_path / "fp32")
    meta = quantize_variant("q", raw, tiny_trained, tmp_path / "q")
    model, _ = load_variant("q", raw, tmp_path / "q", torch.device("cpu"))
    assert sum(isinstance(m, QuantizedEmbedding) for m in model.modules()) == 2
    assert isinstance(model.transformer.wte, QuantizedEmbedding) and isinstance(model.transformer.wpe, QuantizedEmbedding)
    ratio = weights_bytes(tmp_path / "fp32") / weights_bytes(tmp_path / "q")
    # the tiny model is 83% embedding: 4-bit embeddings give > 5x, 8-bit > 3x on disk
    assert ratio > (5.0 if raw["embeddings"] == "int4" else 3.0), (ratio, meta)
    ids = torch.randint(0, 50257, (2, 16))
    with torch.inference_mode():
        out = model(input_ids=ids).logits
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    assert fp32["n_parameters"] == meta["n_parameters"]


def test_torchao_int8_weight_only_quantizes_every_projection(tmp_path, tiny_trained, fp32_artifact):
    raw = {"scheme": "torchao", "config": "int8_weight_only"}
    meta = quantize_variant("ao", raw, tiny_trained, tmp_path / "ao")
    assert meta["quantized_modules"] == 8 and meta["conv1d_projections"] == 8
    model, _ = load_variant("ao", raw, tmp_path / "ao", torch.device("cpu"))
    fp32, _ = load_variant("fp32", {"scheme": "fp32"}, fp32_artifact, torch.device("cpu"))
    ids = torch.randint(0, 50257, (3, 20))
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, fp32(input_ids=ids).logits, atol=0.05, rtol=0.05)
    assert memory_footprint(model) < memory_footprint(fp32)  # int8 codes counted by their inner tensors


@pytest.mark.parametrize("raw,reason", [
    ({"scheme": "torchao", "config": "int4_weight_only", "dtype": "bfloat16"}, "needs CUDA"),
    ({"scheme": "torchao", "config": "float8_dynamic", "dtype": "bfloat16"}, "compute capability"),
    ({"scheme": "cast", "dtype": "float16", "compile": "reduce-overhead"}, "CUDA graphs"),
])
def test_variant_that_cannot_run_on_cpu_is_skipped_with_its_reason(tmp_path, tiny_trained, tiny_prepared, raw, reason):
    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    meta = quantize_variant("gpu_only", raw, tiny_trained, tmp_path / "q", torch.device("cpu"))
    assert reason in meta["skipped"] and not list((tmp_path / "q").glob("*.safetensors"))
    with pytest.raises(VariantSkipped, match=reason):
        load_variant("gpu_only", raw, tmp_path / "q", torch.device("cpu"))
    params = EvalParams(device="cpu")
    metrics, predictions = evaluate_variant("gpu_only", raw, tmp_path / "q", tiny_prepared, params)
    assert reason in metrics["skipped"] and "accuracy" not in metrics and len(predictions) == 0


def test_bad_options_are_one_line_errors():
    from ptqflow.quantize import resolve

    with pytest.raises(PtqflowError, match="embeddings must be one of"):
        resolve("v", {"scheme": "int8_scratch", "embeddings": "int5"})
    with pytest.raises(PtqflowError, match="compile must be one of"):
        resolve("v", {"scheme": "fp32", "compile": "fast"})
    with pytest.raises(PtqflowError, match="set dtype: bfloat16"):
        resolve("v", {"scheme": "torchao", "config": "int4_weight_only"})
    with pytest.raises(PtqflowError, match="group_size"):
        resolve("v", {"scheme": "torchao", "group_size": 100})


def test_compiled_variant_predicts_like_eager_and_reports_the_first_call_apart(tmp_path, tiny_trained, tiny_prepared):
    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    quantize_variant("fp32", {"scheme": "fp32"}, tiny_trained, tmp_path / "fp32")
    params = EvalParams(device="cpu", batch_size=64)
    eager, p_eager = evaluate_variant("fp32", {"scheme": "fp32"}, tmp_path / "fp32", tiny_prepared, params)
    compiled, p_comp = evaluate_variant("c", {"scheme": "fp32", "compile": "default"}, tmp_path / "fp32", tiny_prepared, params)
    assert compiled["compile"] == "default" and eager["compile"] == "none"
    assert (p_eager["predicted"] == p_comp["predicted"]).mean() >= 0.99
    # in the benchmark, compilation happens in the first call, timed apart from the latency samples
    from ptqflow.benchmark import Protocol, run_interleaved
    from ptqflow.batches import random_batch
    from ptqflow.quantize import load_variant

    raw = {"scheme": "fp32", "compile": "default"}
    bench = run_interleaved({"c": lambda: load_variant("c", raw, tmp_path / "fp32", torch.device("cpu"))},
                            {4: random_batch(4, 16, 50257)}, Protocol(rounds=3, warmup=1, iters=2), torch.device("cpu"))
    rec = bench["variants"]["c"]
    assert rec["first_call_ms"]["4"] > 10 * rec["latency"][0]["median_ms"]

