"""What the GPU W8A8 tests (test_fp8.py, test_int8_static.py) share: a tiny GPT-2 quantized by a variant on the
GPU, every projection counted, its logits against fp32's."""

from __future__ import annotations

import pytest
import torch

from ptqflow.quantize import load_variant, quantize_variant, unavailable

CUDA = torch.device("cuda")


def assert_all_projections_8bit_close_to_fp32(raw: dict, tmp_path, max_relative_error: float = 0.1) -> None:
    from ptqflow.batches import random_batch
    from ptqflow.benchmark import build_from_config
    from ptqflow.calibration import random_rows

    from .conftest import GPT2
    from .families import make_base

    if unavailable("v", raw, CUDA):
        pytest.skip(unavailable("v", raw, CUDA))
    build_from_config(str(make_base("gpt2", GPT2, tmp_path / "base")), {}, tmp_path / "model")
    meta = quantize_variant("v", raw, tmp_path / "model", tmp_path / "v", CUDA, calibration=lambda: random_rows(64, 32, 1000, 0))
    assert meta["quantized_modules"] == 8
    model, _ = load_variant("v", raw, tmp_path / "v", CUDA)
    assert model.ptqflow_runtime["w8a8_layers"] == 8 and model.ptqflow_runtime["bf16_layers"] == 0
    quantize_variant("fp32", {"scheme": "fp32"}, tmp_path / "model", tmp_path / "fp32", CUDA)
    ref, _ = load_variant("fp32", {"scheme": "fp32"}, tmp_path / "fp32", CUDA)
    batch = {k: v.to(CUDA) for k, v in random_batch(8, 32, 1000, seed=3).items()}
    with torch.no_grad():
        got, want = model(**batch).logits.float(), ref(**batch).logits.float()
    assert float((got - want).norm() / want.norm()) < max_relative_error
