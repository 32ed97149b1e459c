"""Calibrated low-bit weights: the `lowbit` scheme's formulas (round-to-nearest bound, bit packing, GPTQ and AWQ
doing at least as well as round-to-nearest on the layer's own calibration inputs), the scheme on the tiny GPT-2
(Conv1D projections) with calibration on validation rows, the size search's ladder, and NNCF's weight compression
(`ov_weights`) and ONNX Runtime's MatMulNBits (`ort_int4`) counted per layer on a tiny BERT."""

from __future__ import annotations

import pytest
import torch

from ptqflow.calibration import for_model
from ptqflow.quantize import load_variant, quantize_variant
from ptqflow.quantize.lowbit import LowBitOptions, awq_scale, decode, dequantize, encode, gptq, rtn

CPU = torch.device("cpu")


def _layer_data(seed: int = 0, n: int = 48, k: int = 64, t: int = 512):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.1
    mix = torch.randn(k, k, generator=gen) * 0.3 + torch.eye(k)  # correlated input channels, a few large ones
    x = torch.randn(t, k, generator=gen) @ mix
    x[:, :3] *= 8.0
    return w, x


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_round_to_nearest_within_half_a_step_and_packing_round_trips(bits):
    w, _ = _layer_data()
    q, s, z = rtn(w, bits, 32)
    assert int(q.min()) >= 0 and int(q.max()) <= 2**bits - 1
    err = (dequantize(q, s, z, 32) - w).abs().reshape(w.shape[0], -1, 32)
    # half a step, plus what rounding s to float16 shifts the grid's far end by (Q steps of at most 2^-11 s each)
    assert bool((err <= s[..., None] * (0.5 + (2**bits - 1) * 2.0**-11) + 1e-7).all())
    stored = encode(w, bits, 32, "rtn", None, LowBitOptions(bits=bits, group_size=32, method="rtn"))
    assert stored["qweight"].numel() == w.numel() * bits // 8  # bits per value on disk, packed
    assert torch.equal(decode(stored, bits, tuple(w.shape)), dequantize(q, s, z, 32))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_and_awq_lower_the_output_error_of_round_to_nearest(bits):
    """GPTQ minimises ||X W^T - X deq(Q)^T|| column by column; AWQ's grid includes alpha = 0 (plain RTN): on the
    calibration inputs neither does worse than round-to-nearest, and GPTQ does clearly better."""
    w, x = _layer_data()
    h = 2.0 / x.shape[0] * (x.double().t() @ x.double())
    ref = x @ w.t()

    def loss(w_deq):
        return float(((x @ w_deq.t() - ref) ** 2).mean())

    base = loss(dequantize(*rtn(w, bits, 32), 32))
    assert loss(dequantize(*gptq(w, h, bits, 32, 0.01, 16), 32)) < 0.8 * base
    c, alpha = awq_scale(w, x, bits, 32, 20)
    q, s, z = rtn(w * c[None, :], bits, 32)
    assert loss(dequantize(q, s, z, 32) / c[None, :]) <= base * (1 + 1e-6) and 0.0 <= alpha <= 1.0


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_scheme_packs_every_projection_and_predicts_like_fp32(tmp_path, tiny_trained, tiny_prepared, fp32_artifact, method):
    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant

    raw = {"scheme": "lowbit", "bits": 4, "group_size": 32, "method": method, "calibration_rows": 32, "embeddings": "int4"}
    meta = quantize_variant("q", raw, tiny_trained, tmp_path / "q", CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained))
    assert meta["quantized_modules"] == 8 and meta["formats"] == {f"int4 {method}": {"projections": 8, "weights": meta["formats"][f"int4 {method}"]["weights"],
                                                                                      "bytes": meta["formats"][f"int4 {method}"]["bytes"]}}
    assert meta["quantized_embeddings"] == 2 and meta["kept_full_precision"] == ["score"]
    assert (meta["calibration"] is None) == (method == "rtn")
    model, _ = load_variant("q", raw, tmp_path / "q", CPU)
    assert model.ptqflow_runtime["lowbit_layers"] == 8 and model.ptqflow_runtime["quantized_embeddings"] == 2
    params = EvalParams(device="cpu", batch_size=64)
    m_fp, p_fp = evaluate_variant("fp32", {"scheme": "fp32"}, fp32_artifact, tiny_prepared, params)
    m_q, p_q = evaluate_variant("q", raw, tmp_path / "q", tiny_prepared, params)
    assert (p_fp["predicted"] == p_q["predicted"]).mean() >= 0.85
    assert m_q["size_on_disk"]["bytes"] < 0.3 * m_fp["size_on_disk"]["bytes"]  # 4.75 bits per weight, embeddings 4.5


def test_size_search_climbs_the_ladder_and_records_both_methods(tmp_path, tiny_trained, tiny_prepared):
    """bits: auto with a generous budget: everything fits on the lowest rung (2 bits), GPTQ and round-to-nearest both
    tried and recorded; embeddings: auto then takes the fewest bits that fit."""
    raw = {"scheme": "lowbit", "bits": "auto", "group_size": 32, "calibration_rows": 32, "embeddings": "auto",
           "max_drop": 0.9, "sensitivity_rows": 16}
    meta = quantize_variant("s", raw, tiny_trained, tmp_path / "s", CPU, calibration=lambda: for_model(tiny_prepared, tiny_trained))
    search = meta["size_search"]
    assert set(search["by_method"]) == {"gptq", "rtn"} and search["ladder"] == ["int2", "int3", "int4", "int8", "float"]
    for record in search["by_method"].values():
        assert record["tried"][0]["rung"] == "int2" and record["tried"][0]["raised"] == 0
        assert sum(record["count"].values()) == 8
    assert meta["embeddings"] == "int2-mse" and meta["embedding_search"]["tried"][0]["candidate"] == "int2-mse"
    model, _ = load_variant("s", raw, tmp_path / "s", CPU)
    assert model.ptqflow_runtime["lowbit_layers"] == meta["quantized_modules"]


def test_bad_options_are_one_line(tmp_path, tiny_trained):
    from ptqflow.errors import PtqflowError
    from ptqflow.quantize import resolve

    for raw, message in (({"bits": 9}, "bits must be an integer in 2..8 or auto"), ({"group_size": 12}, "group_size must be a multiple of 8"),
                         ({"method": "magic"}, "method must be")):
        with pytest.raises(PtqflowError, match=message):
            resolve("x", {"scheme": "lowbit", **raw})
    with pytest.raises(PtqflowError, match="group_size 48 does not divide the input width 64"):
        quantize_variant("g", {"scheme": "lowbit", "method": "rtn", "group_size": 48}, tiny_trained, tmp_path / "g", CPU)
    assert not (tmp_path / "g").exists()


def test_openvino_weight_compression_and_ort_matmulnbits_count_what_they_compressed(fresh_family):
    pytest.importorskip("nncf")
    from ptqflow.structure import of

    from .families import PROJECTIONS, random_calibration

    family, root = fresh_family
    from ptqflow.quantize.common import load_finetuned

    found = of(load_finetuned(root / "model"))
    raw = {"scheme": "ov_weights", "mode": "int4_asym", "group_size": 32, "awq": True, "scale_estimation": True, "calibration_rows": 24}
    meta = quantize_variant("w", raw, root / "model", root / "w", CPU, calibration=random_calibration)
    formats = meta["weight_formats"]
    assert set(formats["projections"]) == set(found.projections) and all(t in ("u4", "u8") for t in formats["projections"].values())
    assert meta["quantized_modules"] == sum(t == "u4" for t in formats["projections"].values()) >= PROJECTIONS[family] - 1
    assert all(t == "f32" for t in formats["head"].values())  # the head stays float
    assert meta["methods"] == ["awq", "scale_estimation"] and meta["calibration"]["rows"] == 24
    model, _ = load_variant("w", raw, root / "w", CPU)
    batch = {"input_ids": torch.randint(5, 200, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    if family == "bert":
        batch["token_type_ids"] = torch.zeros(2, 12, dtype=torch.long)
    assert model(**batch).logits.shape == (2, 4)
    meta = quantize_variant("n", {"scheme": "ort_int4", "block_size": 32}, root / "model", root / "n", CPU)
    if family == "gpt2":  # Conv1D projections export as Gemm: said, nothing half-written
        assert "MatMulNBits takes MatMul weight products" in meta["skipped"] and {p.name for p in (root / "n").iterdir()} == {"ptqflow.json"}
        return
    assert meta["quantized_modules"] >= 1 and meta["onnx_operators_quantized"]["MatMulNBits"] == meta["quantized_modules"]
    assert len(meta["head_kept_float"]) == 1


def test_mse_clipped_embeddings_beat_the_plain_range_and_round_trip(tmp_path, tiny_trained):
    """embedding.py formula (3): the chosen shrink factor's squared error is at most the plain min-max range's (c = 1),
    and the stored codes, scales and zero points load back to the same lookups."""
    from ptqflow.quantize.common import load_finetuned
    from ptqflow.quantize.embedding import MSE_GROUP, QuantizedEmbedding, bits_per_value

    torch.manual_seed(0)
    table = torch.randn(40, 128)
    table[3, 5] = 12.0  # one outlier: a plain range wastes its levels on it
    for bits in (2, 3, 4):
        q = QuantizedEmbedding.from_float(table, f"int{bits}-mse", torch.float32)
        g = table.reshape(40, -1, MSE_GROUP)
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        s = ((hi - lo) / (2**bits - 1)).half().float()
        z = torch.round(-lo / s)
        plain = s[..., None] * (torch.clamp(torch.round(g / s[..., None]) + z[..., None], 0, 2**bits - 1) - z[..., None])
        assert float((q.weight - table).pow(2).sum()) <= float((plain.reshape(40, 128) - table).pow(2).sum()) * (1 + 1e-6)
        assert bits_per_value(f"int{bits}-mse", 128) == bits + 24 / 64
    raw = {"scheme": "lowbit", "bits": 4, "group_size": 32, "method": "rtn", "embeddings": "int2-mse"}
    meta = quantize_variant("e", raw, tiny_trained, tmp_path / "e", CPU)
    assert meta["quantized_embeddings"] == 2 and "int2-mse" in meta["runtime_dtype"]
    model, _ = load_variant("e", raw, tmp_path / "e", CPU)
    ids = torch.tensor([[1, 7, 300, 5000]])
    want = QuantizedEmbedding.from_float(load_finetuned(tiny_trained).transformer.wte.weight, "int2-mse", torch.float32)(ids)
    assert torch.equal(model.transformer.wte(ids), want)
