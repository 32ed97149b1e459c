"""One latency and memory protocol, used by `evaluate` for every variant.

A fixed batch (`batch_size` rows padded to `seq_len` tokens) is run `warmup` times untimed, then `iters`
times timed, one forward pass each, under `torch.inference_mode()`. On CUDA each pass is timed with CUDA
events and a synchronize before reading them; on CPU with `time.perf_counter` around the pass, at a
recorded thread count. Reported: median, p95, min, max, mean and standard deviation in ms, throughput
= batch_size / median (samples/s), and peak memory (CUDA: `max_memory_allocated`; CPU: the process's
peak resident set size, which includes everything loaded before).
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time

import torch


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times_ms: list[float], batch_size: int) -> dict:
    median = statistics.median(times_ms)
    return {
        "median_ms": round(median, 4),
        "p95_ms": round(_percentile(times_ms, 95), 4),
        "min_ms": round(min(times_ms), 4),
        "max_ms": round(max(times_ms), 4),
        "mean_ms": round(statistics.fmean(times_ms), 4),
        "std_ms": round(statistics.stdev(times_ms), 4) if len(times_ms) > 1 else 0.0,
        "throughput_samples_per_s": round(batch_size / (median / 1000.0), 2),
    }


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, batch: dict[str, torch.Tensor], warmup: int, iters: int) -> dict:
    """Time `iters` forward passes of `batch` after `warmup` untimed ones (protocol in the module docstring)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    for _ in range(warmup):
        model(**batch)
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(**batch)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        peak = {"peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated(device))}
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - t0) * 1000.0)
        peak = {"peak_rss_bytes": peak_rss_bytes()}
    batch_size, seq_len = batch["input_ids"].shape
    return {
        **summarize(times, batch_size),
        "batch_size": int(batch_size),
        "seq_len": int(seq_len),
        "warmup": warmup,
        "iters": iters,
        "timer": "cuda events + synchronize" if device.type == "cuda" else "time.perf_counter",
        "threads": torch.get_num_threads(),
        **peak,
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def environment(device: torch.device) -> dict:
    """Device and library versions to record beside every measurement."""
    import transformers

    try:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    except Exception:  # noqa: BLE001 - reported, not required
        bnb_version = None
    from .modeling import device_name

    return {
        "device": device.type,
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bnb_version,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


def size_record(n_bytes: int) -> dict:
    """A size in bytes, MiB (2**20) and MB (10**6), units explicit."""
    return {"bytes": int(n_bytes), "MiB": round(n_bytes / 2**20, 4), "MB": round(n_bytes / 1e6, 4)}
