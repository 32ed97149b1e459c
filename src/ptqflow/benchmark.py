"""One latency and memory protocol, used by `evaluate` for every variant.

A fixed batch (`batch_size` rows padded to `seq_len` tokens) is run `warmup` times untimed, then `iters`
times timed, one forward pass each, under `torch.inference_mode()`. On CUDA each pass is timed with CUDA
events and a synchronize before reading them; on CPU with `time.perf_counter` around the pass, at a
recorded thread count. The first warm-up pass is also timed on its own (`first_call_ms`): for a
variant run through `torch.compile` it includes the compilation, kept apart from the latency. Reported: median, p95, min, max, mean and standard deviation in ms, throughput
= batch_size / median (samples/s), and peak memory (CUDA: `max_memory_allocated`; CPU: the process's
peak resident set size, which includes everything loaded before).
"""

from __future__ import annotations

import gc
import os
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
    device = model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    first_call_ms = None
    for i in range(warmup):
        t0 = time.perf_counter()
        model(**batch)
        if i == 0:  # timed on its own: for a compiled model this is where compilation happens
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_call_ms = round((time.perf_counter() - t0) * 1000.0, 2)
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
        "first_call_ms": first_call_ms,
        "timer": "cuda events + synchronize" if device.type == "cuda" else "time.perf_counter",
        "threads": torch.get_num_threads(),
        **peak,
    }


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (int8 models may hold only buffers)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def command_line() -> str:
    """The command that is running, as a user would type it (`python -m ptqflow ...` for the package's __main__)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("ptqflow", "__main__.py")):
        argv[0:1] = ["python", "-m", "ptqflow"]
    elif argv and os.path.basename(argv[0]) == "ptqflow":
        argv[0] = "ptqflow"
    elif argv and argv[0].endswith(".py"):
        argv[0:1] = ["python", os.path.relpath(argv[0])]
    return " ".join(argv)


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
        "command": command_line(),
        "device": device.type,
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bnb_version,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's quantized weights) is counted by its inner tensors."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def memory_footprint(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as held in memory, plus what modules hold outside them
    (`extra_memory_bytes()`, e.g. fbgemm's packed int8 weights)."""
    base = sum(tensor_bytes(t) for t in [*model.parameters(), *model.buffers()])
    return base + sum(int(m.extra_memory_bytes()) for m in model.modules() if hasattr(m, "extra_memory_bytes"))


def size_record(n_bytes: int) -> dict:
    """A size in bytes, MiB (2**20) and MB (10**6), units explicit."""
    return {"bytes": int(n_bytes), "MiB": round(n_bytes / 2**20, 4), "MB": round(n_bytes / 1e6, 4)}


# ------------------------------------------------------------------------------------- ptqflow bench
def random_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full (unpadded) batch of seeded random token ids: GPT-2's compute does not depend on the ids."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build_from_config(config_dir: str, overrides: dict[str, int], out_dir) -> dict:
    """Save a GPT-2 classifier with fresh weights built from `config_dir` (+ overrides) as a model folder."""
    from transformers import AutoConfig, GPT2ForSequenceClassification

    config = AutoConfig.from_pretrained(config_dir, num_labels=4, pad_token_id=50256, **overrides)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(config)
    model.save_pretrained(str(out_dir))
    return {"n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head, "n_parameters": model.num_parameters()}


def bench_variant(model: torch.nn.Module, batch_sizes: list[int], seq_len: int, warmup: int, iters: int) -> list[dict]:
    vocab = model.config.vocab_size
    return [measure_latency(model, random_batch(bs, seq_len, vocab), warmup, iters) for bs in batch_sizes]


def run_bench(
    variants: dict[str, dict],
    batch_sizes: list[int],
    seq_len: int,
    warmup: int,
    iters: int,
    device: torch.device,
    artifacts_dir: str | None = None,
    config_dir: str | None = None,
    overrides: dict[str, int] | None = None,
) -> dict:
    """Time every variant at every batch size on `device`, from pipeline artifacts or a model built from a config.

    From a config, the fresh-weight model is quantized by each variant's registry scheme in a temporary
    folder, exactly as `quantize@<variant>` would. Accuracy is not measured here (`evaluate` does that).
    """
    import tempfile
    from pathlib import Path

    from .errors import PtqflowError
    from .quantize import load_variant, quantize_variant
    from .quantize.registry import run_options
    from .quantize.common import weights_bytes

    results, model_info = [], {}
    with tempfile.TemporaryDirectory(prefix="ptqflow-bench-") as tmp:
        if config_dir:
            src = Path(tmp) / "fp32-source"
            model_info = build_from_config(config_dir, overrides or {}, src)
        for name, raw in variants.items():
            art = Path(artifacts_dir) / name if artifacts_dir else Path(tmp) / name
            record: dict = {"variant": name, "scheme": raw.get("scheme")}
            try:
                if config_dir:
                    quantize_variant(name, raw, src, art, device)
                if device.type == "cuda":  # release whatever the quantize step or the last variant left
                    gc.collect()
                    torch.cuda.empty_cache()
                    before = torch.cuda.memory_allocated(device)
                model, meta = load_variant(name, raw, art, device)
                if device.type == "cuda":
                    record["gpu_memory_after_load_bytes"] = int(torch.cuda.memory_allocated(device) - before)
                record.update(
                    runtime_dtype=meta.get("runtime_dtype"),
                    compile=run_options(name, raw).compile,
                    runtime=getattr(model, "ptqflow_runtime", {}),
                    size_on_disk=size_record(weights_bytes(art)),
                    memory_footprint=size_record(memory_footprint(model)),
                    latency=bench_variant(model, batch_sizes, seq_len, warmup, iters),
                )
                del model
                gc.collect()
            except (PtqflowError, RuntimeError, NotImplementedError) as exc:
                record["skipped"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            print(f"bench {name}: " + (record.get("skipped") or ", ".join(
                f"b{r['batch_size']} {r['median_ms']:.2f} ms" for r in record["latency"])), flush=True)
            results.append(record)
    return {
        "environment": environment(device),
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d"),
        "model": model_info or {"artifacts": artifacts_dir},
        "protocol": {"seq_len": seq_len, "batch_sizes": batch_sizes, "warmup": warmup, "iters": iters,
                     "input": "seeded random token ids, no padding"},
        "results": results,
    }


def bench_markdown(bench: dict) -> str:
    """The bench as a markdown table: median / p95 ms, throughput, speedup vs fp32 and vs fp16 per batch size."""
    env, proto = bench["environment"], bench["protocol"]
    ok = [r for r in bench["results"] if "latency" in r]
    by = {r["variant"]: {lat["batch_size"]: lat for lat in r["latency"]} for r in ok}
    lines = [
        f"Device: {env['device_name']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"bitsandbytes {env['bitsandbytes']}, CUDA {env['cuda']}. Date: {bench['date']}.",
        f"Model: {bench['model']}. Sequence length {proto['seq_len']}; {proto['warmup']} warm-up + "
        f"{proto['iters']} timed forward passes per point; {proto['input']}.",
        f"Command: `{bench['command']}`",
        "",
        "| variant | run-time dtype | compile | size (MiB) | GPU mem after load (MiB) | batch | median (ms) | p95 (ms) | "
        "first call (ms) | samples/s | vs fp32 | vs fp16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        for bs, lat in by[r["variant"]].items():
            ref32 = by.get("fp32", {}).get(bs)
            ref16 = by.get("fp16", {}).get(bs)
            vs32 = f"{ref32['median_ms'] / lat['median_ms']:.2f}x" if ref32 else "-"
            vs16 = f"{ref16['median_ms'] / lat['median_ms']:.2f}x" if ref16 else "-"
            mem = r.get("gpu_memory_after_load_bytes")
            cells = [
                r["variant"], r["runtime_dtype"], r.get("compile", "none"), f"{r['size_on_disk']['MiB']:.2f}",
                f"{mem / 2**20:.1f}" if mem is not None else "-", str(bs), f"{lat['median_ms']:.2f}", f"{lat['p95_ms']:.2f}",
                str(lat.get("first_call_ms", "-")), f"{lat['throughput_samples_per_s']:.1f}", vs32, vs16,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for r in bench["results"]:
        if "skipped" in r:
            lines.append(f"\n`{r['variant']}` skipped: {r['skipped']}")
    return "\n".join(lines) + "\n"
