"""The interleaved benchmark on real tiny models: identical compute is no measurable difference, a variant
doing deliberately more work is slower, a variant that does not fit is timed alone, one that cannot run is skipped."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ptqflow.benchmark import Protocol, benchmark_artifacts, run_interleaved, speeds_against
from ptqflow.config import BenchmarkParams, ProfileParams
from ptqflow.quantize import SCHEMES, VariantSkipped, fp32, load_variant, quantize_variant
from ptqflow.stats import SAME, SLOWER

CPU = torch.device("cpu")


class _ThreeTimes(torch.nn.Module):
    """Test-only: the same model, run three times per forward (deliberately slower, same answers)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, **batch):
        for _ in range(3):
            out = self.model(**batch)
        return out


@pytest.fixture
def slow_scheme():
    """A test-only registry scheme: fp32's artifact, loaded wrapped in `_ThreeTimes`."""
    scheme = dataclasses.replace(fp32.SCHEME, name="slow_fp32_test", load=lambda d, o, dev: _ThreeTimes(fp32.SCHEME.load(d, o, dev)))
    SCHEMES[scheme.name] = scheme
    yield scheme.name
    del SCHEMES[scheme.name]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_trained):
    root = tmp_path_factory.mktemp("artifacts")
    for name, raw in {"fp32": {"scheme": "fp32"}, "int8_scratch": {"scheme": "int8_scratch"},
                      "int4_wo_ao": {"scheme": "torchao", "config": "int4_weight_only", "dtype": "bfloat16"}}.items():
        quantize_variant(name, raw, tiny_trained, root / name, CPU)
    return root


def test_identical_compute_is_no_measurable_difference_and_more_work_is_slower(artifacts, tiny_prepared, slow_scheme):
    """int8_scratch is dequantized to float32 at load: it computes exactly as fp32 does."""
    quantize_variant("slow", {"scheme": slow_scheme}, artifacts / "fp32", artifacts / "slow", CPU)
    variants = {"fp32": {"scheme": "fp32"}, "int8_scratch": {"scheme": "int8_scratch"}, "slow": {"scheme": slow_scheme},
                "int4_wo_ao": {"scheme": "torchao", "config": "int4_weight_only", "dtype": "bfloat16"}}
    profiles = {"b8": ProfileParams(8, "fixed", "random", 8, 4, "latency"),
                "stream": ProfileParams(4, "longest", "by_length", 32, 1, "throughput")}
    params = BenchmarkParams(profiles=profiles, rounds=15, warmup=1, device="cpu", threads=1)
    bench = benchmark_artifacts(variants, artifacts, tiny_prepared, params, anchor="fp32")
    assert "needs CUDA" in bench["variants"]["int4_wo_ao"]["skipped"]
    assert bench["protocol"]["threads"] == 1 and bench["protocol"]["rounds"] == 15
    assert bench["environment"]["cpu"]["model"] and "peak resident memory" in bench["variants"]["fp32"]["peak_memory"]
    speed = speeds_against(bench, "fp32", adjustment="holm")  # as the report judges: intervals that hold jointly
    assert set(speed) == {"fp32", "int8_scratch", "slow"}
    same = speed["int8_scratch"]
    assert same["speed_verdict"] == SAME, same
    lo, hi = same["speedup_ci_verdict"]
    assert lo <= 1.0 <= hi or 0.9 <= lo <= hi <= 1.1, same
    slow = speed["slow"]
    assert slow["speed_verdict"] == SLOWER and slow["speedup_ci95"][1] < 1.0 and 0.2 < slow["speedup"] < 0.5, slow
    # the throughput profile pairs on each round's total over its 32 real rows (8 calls of 4, longest first)
    stream = speeds_against(bench, "fp32", "stream", adjustment="holm")
    assert stream["slow"]["speed_verdict"] == SLOWER and 0.2 < stream["slow"]["speedup"] < 0.5, stream["slow"]
    assert stream["int8_scratch"]["speed_verdict"] == SAME, stream["int8_scratch"]
    timed = bench["variants"]["fp32"]["latency"]
    assert [x["profile"] for x in timed] == ["b8", "stream"] and timed[1]["paired_on"] == "round_totals_ms"
    assert timed[1]["passes"] == 15 * 8 and timed[0]["passes"] == 15 * 4  # every call timed on its own
    info = bench["protocol"]["profiles"]
    assert info["b8"]["max_length"] == 32 and info["stream"]["max_length"] is None and info["stream"]["rows"] == 32 and info["stream"]["calls"] == 8


def test_a_variant_that_does_not_fit_is_timed_alone_beside_the_anchor(artifacts):
    from ptqflow.batches import random_batch

    tries = {"n": 0}

    def big():
        tries["n"] += 1
        if tries["n"] == 1:  # the first load, beside the others, runs out of memory
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return load_variant("int8_scratch", {"scheme": "int8_scratch"}, artifacts / "int8_scratch", CPU)

    def skipped():
        raise VariantSkipped("needs a GPU (test)")

    loaders = {"fp32": lambda: load_variant("fp32", {"scheme": "fp32"}, artifacts / "fp32", CPU), "big": big, "gpu": skipped}
    bench = run_interleaved(loaders, {2: random_batch(2, 16, 50257)}, Protocol(rounds=3, warmup=0, iters=2), CPU, anchor="fp32")
    rec = bench["variants"]["big"]
    assert tries["n"] == 2 and rec["timed"].startswith("alone beside fp32") and "OutOfMemoryError" in rec["timed"]
    assert len(rec["latency"][0]["round_medians_ms"]) == 3 and len(rec["anchor_latency"][0]["round_medians_ms"]) == 3
    assert bench["variants"]["gpu"] == {"variant": "gpu", "skipped": "needs a GPU (test)"}
    assert bench["variants"]["fp32"]["timed"] == "interleaved with all"
    assert "big" in speeds_against(bench, "fp32")  # paired with the anchor's rounds beside it


@pytest.mark.gpu
def test_cuda_timing_and_peak_memory_per_variant(tmp_path):
    from ptqflow.batches import random_batch
    from ptqflow.benchmark import build_from_config

    from .conftest import GPT2

    cuda = torch.device("cuda")
    build_from_config(str(GPT2), {"n_layer": 2, "n_embd": 64, "n_head": 2}, tmp_path / "src")
    for name in ("fp32", "int8_scratch"):
        quantize_variant(name, {"scheme": name}, tmp_path / "src", tmp_path / name, cuda)
    loaders = {n: (lambda n=n: load_variant(n, {"scheme": n}, tmp_path / n, cuda)) for n in ("fp32", "int8_scratch")}
    bench = run_interleaved(loaders, {4: random_batch(4, 32, 50257)}, Protocol(rounds=3, warmup=1, iters=3), cuda, anchor="fp32")
    for name in loaders:
        rec = bench["variants"][name]
        assert rec["gpu_memory_after_load_bytes"] > 0 and rec["peak_memory"]["bytes"] >= rec["gpu_memory_after_load_bytes"]
    assert bench["protocol"]["timer"] == "cuda events + synchronize"


def test_profile_batches_are_real_rows_seeded_grouped_and_padded_as_asked():
    from ptqflow.batches import profile_batches, tokens

    rows = [[7] * n for n in (5, 30, 12, 8, 21, 3, 17, 9)]
    online = profile_batches(rows, ProfileParams(1, "longest", "random", 6, 1, "latency"), 0, 32, seed=1)
    assert len(online) == 6 and all(c["input_ids"].shape[0] == 1 for c in online)
    assert all(int(c["attention_mask"].sum()) == c["input_ids"].shape[1] for c in online)  # one row: no padding
    again = profile_batches(rows, ProfileParams(1, "longest", "random", 6, 1, "latency"), 0, 32, seed=1)
    assert [c["input_ids"].shape[1] for c in online] == [c["input_ids"].shape[1] for c in again]  # seeded
    rows = rows + [[7] * n for n in (4, 29, 11, 8, 22, 3, 16, 10)]  # 16 rows: length-neighbours pair up
    bucketed = profile_batches(rows, ProfileParams(2, "longest", "by_length", 6, 1, "throughput"), 0, 32)
    assert len(bucketed) == 3 and all(c["input_ids"].shape[0] == 2 for c in bucketed)
    assert all(int(c["attention_mask"].sum(1).max() - c["attention_mask"].sum(1).min()) <= 1 for c in bucketed)  # one length each
    assert tokens(bucketed)["padding_share"] < 0.05
    fixed = profile_batches(rows, ProfileParams(4, "fixed", "random", 12, 1, "latency"), 0, 32)
    assert [tuple(c["input_ids"].shape) for c in fixed] == [(4, 32)] * 3  # 12 of 8 rows: cycled
    t = tokens(fixed)
    assert t["rows"] == 12 and 0.0 < t["padding_share"] < 1.0 and tokens(online)["padding_share"] == 0.0
