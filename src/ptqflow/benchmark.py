"""Speed you can compare: every variant loaded into one process and timed interleaved.

Protocol (the same for the `benchmark` stage and `ptqflow bench`):
1. Load every runnable variant. A variant that cannot run here is recorded as skipped, with the reason. A
   variant that does not fit beside the others (out of memory on load) is timed later, alone beside the
   anchor variant (the report's baseline), and labelled so.
2. First call: each variant runs the first call of each workload once, timed on its own (`first_call_ms`); for a
   `torch.compile` variant this is where compilation happens, so it is kept apart from the latency.
3. R rounds; each round visits every variant once, in a fresh random order drawn from a seeded generator;
   a visit is, per workload, `warmup` untimed calls and then `passes` timed passes over the workload's calls,
   each call timed on its own, under `torch.inference_mode()`. CPU: `time.perf_counter` around each call, at a
   thread count fixed for the whole run and recorded. CUDA: CUDA events around each call and a synchronize
   before reading them.
   A workload is a traffic profile of the pipeline (batches.profile_batches: real test rows at real lengths,
   one at a time or in batches) or, for `ptqflow bench`, one fixed batch per batch size timed `iters` times.
4. Per variant and workload: median, p95, p99 and IQR over all timed calls, the rows per second over all of them,
   and per round the median call and the total time. The paired speedup against any other variant (stats.py:
   ratio per round, median over rounds, bootstrap 95% interval over rounds) pairs on the per-round median call
   for a latency profile, on the per-round total (throughput) for a throughput profile.
Peak memory per variant is measured where it does not mix variants: on CUDA, the bytes its load added plus
the most its passes allocated above what was allocated before them (`max_memory_allocated` reset around each
visit). On CPU one process holds every variant, so its peak resident set cannot be attributed to one: said so.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .machine import command_line, environment
from .sizes import model_device, size_record

CPU_MEMORY_NOTE = "unavailable on CPU: one process holds every variant, so its peak resident memory cannot be attributed to one"


@dataclass
class Protocol:
    rounds: int = 15
    warmup: int = 1
    iters: int = 5
    seed: int = 0


# -------------------------------------------------------------------------------------------- timing
def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_summary(rounds_ms: list[list[float]], batch_size: int | None, rows_per_round: int | None = None,
                    profile: str | None = None, statistic: str = "latency") -> dict:
    """Median, p95, p99, IQR, min, max over every timed call of every round; each round's median call and total
    time; rows per second over all rounds (`rows_per_round` rows timed per round). A profile's record names it,
    and which per-round series its speedups pair on (`paired_on`)."""
    flat = [t for r in rounds_ms for t in r]
    median = statistics.median(flat)
    q25, q75 = _percentile(flat, 25), _percentile(flat, 75)
    rows = rows_per_round if rows_per_round is not None else (batch_size or 1) * len(rounds_ms[0])
    out = {
        **({"profile": profile} if profile is not None else {}),
        "batch_size": int(batch_size) if batch_size is not None else None,
        "median_ms": round(median, 4),
        "p95_ms": round(_percentile(flat, 95), 4),
        "p99_ms": round(_percentile(flat, 99), 4),
        "iqr_ms": round(q75 - q25, 4),
        "q25_ms": round(q25, 4),
        "q75_ms": round(q75, 4),
        "min_ms": round(min(flat), 4),
        "max_ms": round(max(flat), 4),
        "passes": len(flat),
        "throughput_samples_per_s": round((batch_size or 1) / (median / 1000.0), 2),
        "rows_per_s": round(rows * len(rounds_ms) / (sum(flat) / 1000.0), 2),
        "round_medians_ms": [round(statistics.median(r), 4) for r in rounds_ms],
        "round_totals_ms": [round(sum(r), 4) for r in rounds_ms],
        "paired_on": "round_totals_ms" if statistic == "throughput" else "round_medians_ms",
    }
    return out


def _timed_passes(model: torch.nn.Module, batch: dict, n: int, device: torch.device) -> list[float]:
    """`n` forward passes, each timed (ms): perf_counter on CPU, CUDA events + synchronize on CUDA."""
    times = []
    if device.type == "cuda":
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(**batch)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(n):
            t0 = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _first_call_ms(model: torch.nn.Module, batch: dict, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    model(**batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return round((time.perf_counter() - t0) * 1000.0, 2)


@dataclass
class Workload:
    """What one visit runs: the calls (input batches) timed one by one, `passes` times; `rows` per pass; what
    its speedups pair on (`statistic`: latency or throughput); the `profile` name, if it is one."""

    calls: list[dict]
    passes: int
    statistic: str = "latency"
    profile: str | None = None

    @property
    def rows(self) -> int:
        return sum(int(c["input_ids"].shape[0]) for c in self.calls)

    @property
    def batch_size(self) -> int | None:
        sizes = {int(c["input_ids"].shape[0]) for c in self.calls}
        return max(sizes) if sizes else None


@torch.inference_mode()
def interleave(
    models: dict[str, torch.nn.Module], workloads: dict, protocol: Protocol, device: torch.device, desc: str = "benchmark",
) -> dict[str, dict]:
    """Steps 2-4 of the protocol for the loaded `models`; {variant: {first_call_ms, latency, peak memory}}.
    `workloads`: {key: Workload}, or {batch size: one batch} (timed `protocol.iters` times per visit)."""
    loads = {k: w if isinstance(w, Workload) else Workload([w], protocol.iters) for k, w in workloads.items()}
    loads = {k: Workload([{n: t.to(device) for n, t in c.items()} for c in w.calls], w.passes, w.statistic, w.profile)
             for k, w in loads.items()}
    names = list(models)
    out: dict[str, dict] = {n: {"first_call_ms": {}, "visit_peak_bytes": 0} for n in names}
    for name in names:
        for key, load in loads.items():
            out[name]["first_call_ms"][str(key)] = _first_call_ms(models[name], load.calls[0], device)
    times = {n: {key: [] for key in loads} for n in names}
    rng = np.random.default_rng(protocol.seed)
    bar = tqdm(total=protocol.rounds * len(names) * len(loads), desc=desc, unit="visit")
    for _ in range(protocol.rounds):
        for i in rng.permutation(len(names)):
            name = names[i]
            for key, load in loads.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                for w in range(protocol.warmup):
                    _timed_passes(models[name], load.calls[w % len(load.calls)], 1, device)
                visit = []
                for _ in range(load.passes):
                    for call in load.calls:
                        visit += _timed_passes(models[name], call, 1, device)
                times[name][key].append(visit)
                if device.type == "cuda":
                    extra = torch.cuda.max_memory_allocated(device) - before
                    out[name]["visit_peak_bytes"] = max(out[name]["visit_peak_bytes"], int(extra))
                bar.update(1)
    bar.close()
    for name in names:
        out[name]["latency"] = [latency_summary(times[name][key], load.batch_size, load.rows * load.passes, load.profile,
                                                load.statistic) for key, load in loads.items()]
    return out


# ------------------------------------------------------------------------------------------- loading
def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower()


def run_interleaved(
    loaders: dict[str, Callable[[], tuple[torch.nn.Module, dict]]],
    batches: dict[int, dict],
    protocol: Protocol,
    device: torch.device,
    anchor: str | None = None,
    describe: Callable[[str, torch.nn.Module, dict], dict] | None = None,
) -> dict:
    """Load every variant with its loader (-> (model, info)), time them all interleaved, and return the record.

    A loader raising `VariantSkipped` marks the variant skipped (with the reason); one running out of memory
    marks it "alone": it is timed after the others are released, interleaved with `anchor` only.
    `describe(name, model, info)` adds what is known about the loaded model (dtype, size, kernel).
    """
    from .quantize import VariantSkipped

    records: dict[str, dict] = {}
    models: dict[str, torch.nn.Module] = {}
    alone: list[str] = []
    for name, load in tqdm(loaders.items(), desc="load variants", unit="variant"):
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        try:
            model, info = load()
        except VariantSkipped as exc:
            records[name] = {"variant": name, "skipped": str(exc)}
            continue
        except BaseException as exc:  # noqa: BLE001 - only out-of-memory is handled here
            if not _is_oom(exc):
                raise
            records[name] = {"variant": name, "timed": f"alone beside {anchor} (did not fit beside the others: "
                                                       f"{type(exc).__name__})"}
            alone.append(name)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        records[name] = {"variant": name, "timed": "interleaved with all", **(describe(name, model, info) if describe else {})}
        if device.type == "cuda":
            records[name]["gpu_memory_after_load_bytes"] = int(torch.cuda.memory_allocated(device) - before)
        models[name] = model
    if models:
        for name, res in interleave(models, batches, protocol, device).items():
            records[name].update(_with_memory(res, records[name], device))
    if alone:
        if anchor not in models:
            raise ValueError(f"variants {alone} must be timed beside the anchor {anchor!r}, which did not load")
        keep = models.pop(anchor)
        models.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for name in alone:
            try:
                model, info = loaders[name]()
            except BaseException as exc:  # noqa: BLE001
                if not _is_oom(exc):
                    raise
                records[name] = {"variant": name, "skipped": f"does not fit in memory even alone beside {anchor}: {exc}"[:300]}
                continue
            if describe:
                records[name].update(describe(name, model, info))
            pair = interleave({anchor: keep, name: model}, batches, protocol, device, desc=f"benchmark {name} alone")
            records[name].update(_with_memory(pair[name], records[name], device))
            records[name]["anchor_latency"] = pair[anchor]["latency"]
            del model
            gc.collect()
    first = next(iter(batches.values()))
    first = first.calls[0] if isinstance(first, Workload) else first
    fixed = all(not isinstance(w, Workload) or w.profile is None for w in batches.values())
    return {
        "environment": environment(device),
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d"),
        "protocol": {**asdict(protocol), "workloads": list(batches),
                     **({"batch_sizes": list(batches), "seq_len": int(first["input_ids"].shape[1])} if fixed else {}),
                     "order": "every round visits every variant once, in a fresh random order (numpy default_rng(seed))",
                     "timer": "cuda events + synchronize" if device.type == "cuda" else "time.perf_counter",
                     "threads": torch.get_num_threads(), "anchor": anchor},
        "variants": records,
    }


def _with_memory(res: dict, record: dict, device: torch.device) -> dict:
    res = dict(res)
    extra = res.pop("visit_peak_bytes")
    if device.type == "cuda":
        res["peak_memory"] = {**size_record(record.get("gpu_memory_after_load_bytes", 0) + extra),
                              "what": "GPU bytes its load added + the most its passes allocated above that"}
    else:
        res["peak_memory"] = CPU_MEMORY_NOTE
    return res


def fix_threads(threads: int | None, device: torch.device) -> int:
    """Fix the CPU thread count for the whole run (None: keep torch's default); returns it."""
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# --------------------------------------------------------------------------------------- speed stats
def default_key(bench: dict):
    """The workload the single-speed figures use: the first profile (or batch size) of the run."""
    proto = bench["protocol"]
    return (proto.get("workloads") or proto["batch_sizes"])[0]


def speeds_against(bench: dict, baseline: str, key=None, resamples: int = 2000, seed: int = 0,
                   equivalence: float = 0.05, alpha: float = 0.05, adjustment: str = "none") -> dict[str, dict]:
    """{variant: {speedup, speedup_ci95, speed_verdict, rounds, ...}} against `baseline` for workload `key` (a
    profile name or batch size; default: the first), paired by round (stats.paired_speedup) on the series the
    workload names (`paired_on`: the per-round median call, or the per-round total for a throughput profile). A
    variant timed alone is paired with the anchor's rounds beside it; variants without timings are left out.
    With `adjustment` other than none, each verdict uses the simultaneous interval of the family of variants timed
    against `baseline` (stats.simultaneous_level)."""
    from .stats import paired_speedup

    records = bench["variants"]
    key = default_key(bench) if key is None else key

    def rounds(record: dict, field: str = "latency") -> list[float] | None:
        lat = latency_at(record, key, field)
        return lat[lat.get("paired_on", "round_medians_ms")] if lat else None

    base = rounds(records.get(baseline, {}))
    if base is None:
        return {}
    pairs = {}
    for name, rec in records.items():
        mine, ref = rounds(rec), base
        if "anchor_latency" in rec:  # timed alone beside the anchor: paired only with the anchor's rounds there
            if baseline != bench["protocol"].get("anchor"):
                continue
            ref = rounds(rec, "anchor_latency")
        if mine is not None and ref is not None:
            pairs[name] = (ref, mine)
    from .stats import simultaneous_level

    level = simultaneous_level(alpha, len([n for n in pairs if n != baseline]), adjustment)
    return {name: paired_speedup(ref, mine, resamples, seed, equivalence, verdict_level=level)
            for name, (ref, mine) in pairs.items()}


def latency_at(record: dict, key, field: str = "latency") -> dict | None:
    """The summary of `record`'s timed calls for workload `key`: a profile name, or a batch size (`ptqflow bench`,
    and benchmark files written before profiles). None when it was not timed."""
    hit = [x for x in record.get(field, []) if (x["profile"] if "profile" in x else x["batch_size"]) == key]
    return hit[0] if hit else None


def fastest_half(bench: dict, candidates: list[str], key=None) -> str | None:
    """Of `candidates` (half-precision casts), the one with the lowest median latency on this machine."""
    key = default_key(bench) if key is None else key
    timed = [(latency_at(bench["variants"].get(c, {}), key), c) for c in candidates]
    timed = [(lat["median_ms"], c) for lat, c in timed if lat]
    return min(timed)[1] if timed else None


# ---------------------------------------------------------------------------------- pipeline + bench
def benchmark_artifacts(variants: dict[str, dict], artifacts_dir: str | Path, prepared_dir: str | Path, params,
                        anchor: str) -> dict:
    """The `benchmark` stage: every variant's artifact from `quantize@`, timed interleaved on each traffic profile
    of `params` (config.BenchmarkParams): real test rows at real lengths (batches.profile_batches)."""
    from .batches import profile_batches, tokens
    from .data import load_prepared
    from .modeling import pick_device

    device = pick_device(params.device)
    fix_threads(params.threads, device)
    data, meta = load_prepared(prepared_dir)
    rows = list(data["test"]["input_ids"])
    loaders = {name: _artifact_loader(name, raw, Path(artifacts_dir) / name, device) for name, raw in variants.items()}
    config = _artifact_config(Path(artifacts_dir), variants)
    pad_id = meta.get("pad_token_id", config.get("pad_token_id")) or 0
    types = (list(data["test"]["token_type_ids"]) if "token_type_ids" in data["test"].column_names and config.get("type_vocab_size")
             else None)
    workloads = {name: Workload(profile_batches(rows, p, pad_id, meta["max_length"], params.seed, types), p.passes,
                                p.statistic, name)
                 for name, p in params.profiles.items()}
    protocol = Protocol(params.rounds, params.warmup, 1, params.seed)
    bench = run_interleaved(loaders, workloads, protocol, device, anchor=anchor, describe=_describe)
    from dataclasses import asdict as fields

    bench["protocol"]["profiles"] = {name: {**fields(p), **tokens(workloads[name].calls),
                                            "max_length": meta["max_length"] if p.padding == "fixed" else None}
                                     for name, p in params.profiles.items()}
    return bench


def _artifact_loader(name: str, raw: dict, art: Path, device: torch.device) -> Callable[[], tuple[torch.nn.Module, dict]]:
    def load():
        from .quantize import load_variant
        from .quantize.registry import run_options

        model, meta = load_variant(name, raw, art, device)
        return model, {**meta, "compile": run_options(name, raw).compile}

    return load


def _describe(name: str, model: torch.nn.Module, meta: dict) -> dict:
    from .sizes import memory_footprint

    return {"scheme": meta.get("scheme"), "runtime_dtype": meta.get("runtime_dtype"), "compile": meta.get("compile", "none"),
            "runtime": getattr(model, "ptqflow_runtime", {}), "memory_footprint": size_record(memory_footprint(model)),
            "device": str(model_device(model))}


CALIBRATION_ROWS = 256  # `ptqflow bench --from-config`: seeded random rows for calibrating schemes


def build_from_config(config_dir: str, overrides: dict, out_dir) -> dict:
    """Save a classifier of whatever architecture `config_dir`'s config names (+ overrides), fresh weights, as a
    model folder (4 labels; pad = the config's pad, else its EOS, else 0)."""
    from transformers import AutoModelForSequenceClassification

    from .config import ModelParams
    from .modeling import load_config
    from .structure import of

    config = load_config(ModelParams(base=str(config_dir), init="scratch", overrides=dict(overrides)))
    config.num_labels = 4
    if config.pad_token_id is None:
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(str(out_dir))
    return {"model_type": config.model_type, "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
            "projections": len(of(model).projections), "n_parameters": model.num_parameters(),
            "vocab_size": config.vocab_size, "pad_token_id": config.pad_token_id}


def run_bench(
    variants: dict[str, dict],
    batch_sizes: list[int],
    seq_len: int,
    protocol: Protocol,
    device: torch.device,
    baseline: str,
    artifacts_dir: str | None = None,
    config_dir: str | None = None,
    overrides: dict[str, int] | None = None,
    threads: int | None = None,
) -> dict:
    """`ptqflow bench`: the interleaved protocol on pipeline artifacts or on a model built from a config.

    From a config, the fresh-weight model is quantized by each variant's registry scheme in a temporary
    folder, exactly as `quantize@<variant>` would. Inputs are seeded random token ids, no padding; a
    calibrating scheme calibrates on CALIBRATION_ROWS other seeded random rows (there is no data). Accuracy
    is not measured here (`evaluate` does that).
    """
    import tempfile
    from functools import partial

    from .batches import random_batch
    from .calibration import random_rows
    from .quantize import quantize_variant
    from .quantize.common import weights_bytes

    fix_threads(threads, device)
    model_info: dict = {}
    with tempfile.TemporaryDirectory(prefix="ptqflow-bench-") as tmp:
        if config_dir:
            src = Path(tmp) / "fp32-source"
            model_info = build_from_config(config_dir, overrides or {}, src)
            calibration = partial(random_rows, CALIBRATION_ROWS, seq_len, int(model_info.get("vocab_size", 50257)),
                                  int(model_info.get("pad_token_id", 0)))
            for name, raw in tqdm(variants.items(), desc="quantize", unit="variant"):
                quantize_variant(name, raw, src, Path(tmp) / name, device, calibration=calibration)
        root = Path(artifacts_dir) if artifacts_dir else Path(tmp)
        loaders = {name: _artifact_loader(name, raw, root / name, device) for name, raw in variants.items()}
        vocab = int(_artifact_config(root, variants).get("vocab_size", 50257))
        batches = {bs: random_batch(bs, seq_len, vocab) for bs in batch_sizes}  # one fixed batch each, protocol.iters times

        def describe(name, model, meta):
            return {**_describe(name, model, meta), "size_on_disk": size_record(weights_bytes(root / name))}

        bench = run_interleaved(loaders, batches, protocol, device, anchor=baseline, describe=describe)
    bench["model"] = model_info or {"artifacts": artifacts_dir}
    bench["protocol"]["input"] = "seeded random token ids, no padding"
    bench["baseline"] = baseline
    return bench


def _artifact_config(root: Path, variants: dict) -> dict:
    """The model config of the first variant artifact that has one (every variant shares the fine-tuned config)."""
    import json

    for name in variants:
        cfg = root / name / "config.json"
        if cfg.is_file():
            return json.loads(cfg.read_text())
    return {}


def add_speeds(bench: dict, baseline: str, half: str | None, adjustment: str = "holm") -> dict:
    """Write `speedup`, `speedup_ci95`, `speed_verdict` (and the same against `half`) into every timed batch
    of every variant: the fields the pipeline's comparison.json carries. Verdicts use the simultaneous interval
    of the variants timed (stats.simultaneous_level), as the report's do."""
    for bs in bench["protocol"].get("workloads") or bench["protocol"]["batch_sizes"]:
        for ref, suffix in ((baseline, ""), (half, "_vs_half")):
            if not ref:
                continue
            for name, sp in speeds_against(bench, ref, bs, adjustment=adjustment).items():
                lat = latency_at(bench["variants"][name], bs)
                lat.update({f"speedup{suffix}": sp["speedup"], f"speedup{suffix}_ci95": sp["speedup_ci95"],
                            f"speed_verdict{suffix}": "baseline" if name == ref else sp["speed_verdict"]})
    bench["half_baseline"] = half
    bench["verdict_adjustment"] = adjustment
    return bench


def bench_markdown(bench: dict) -> str:
    """The bench as a markdown table: per variant and batch size, median / p95 / IQR, speedups with CI and verdict."""
    env, proto = bench["environment"], bench["protocol"]
    base, half = bench.get("baseline"), bench.get("half_baseline")
    lines = [
        f"Device: {env['device_name']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"bitsandbytes {env['bitsandbytes']}, onnxruntime {env.get('onnxruntime')}, openvino {env.get('openvino')}, "
        f"nncf {env.get('nncf')}, CUDA {env['cuda']}. Date: {bench['date']}.",
        f"Model: {bench['model']}. Sequence length {proto['seq_len']}; {proto['input']}.",
        f"Protocol: every variant loaded in one process, {proto['rounds']} rounds, each visiting every variant once "
        f"in a fresh seeded random order (seed {proto['seed']}); a visit = {proto['warmup']} warm-up + {proto['iters']} "
        f"timed passes; {proto['timer']}; {proto['threads']} threads. Speedup = median over rounds of the paired "
        f"ratio baseline / variant, [bootstrap 95% interval over rounds].",
        f"Command: `{bench['command']}`",
        "",
        f"| variant | run-time dtype | compile | size (MiB) | GPU mem after load (MiB) | batch | median (ms) | p95 (ms) | "
        f"IQR (ms) | first call (ms) | vs {base} [95% CI] | verdict | vs {half or 'half'} [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in bench["variants"].items():
        for lat in r.get("latency", []):
            mem = r.get("gpu_memory_after_load_bytes")
            cells = [
                name + ("" if r.get("timed", "").startswith("interleaved") else " (alone)"), str(r.get("runtime_dtype")),
                str(r.get("compile", "none")), f"{r['size_on_disk']['MiB']:.2f}" if "size_on_disk" in r else "-",
                f"{mem / 2**20:.1f}" if mem is not None else "-", str(lat["batch_size"]), f"{lat['median_ms']:.2f}",
                f"{lat['p95_ms']:.2f}", f"{lat['iqr_ms']:.2f}", str(r["first_call_ms"].get(str(lat["batch_size"]), "-")),
                speed_text(lat), lat.get("speed_verdict", "-"), speed_text(lat, "_vs_half"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for name, r in bench["variants"].items():
        if "skipped" in r:
            lines.append(f"\n`{name}` skipped: {r['skipped']}")
    return "\n".join(lines) + "\n"


def speed_text(record: dict, suffix: str = "") -> str:
    """'1.23x [1.10, 1.31]' from a record's `speedup{suffix}` and `speedup{suffix}_ci95`, or '-'."""
    if record.get(f"speedup{suffix}") is None:
        return "-"
    lo, hi = record[f"speedup{suffix}_ci95"]
    return f"{record[f'speedup{suffix}']:.2f}x [{lo:.2f}, {hi:.2f}]"
