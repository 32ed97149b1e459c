"""Where a forward's time goes on the GPU, kernel by kernel: `torch.profiler` over one forward per batch size of each
variant, on a model built from a config (fresh weights; the variants quantized as `ptqflow bench --from-config`
does, calibrating on seeded random rows), compiled as the variant says (CUDA graphs for reduce-overhead: the
profiler sees the kernels the graph replays). Writes a kernel table (Markdown) and one Chrome trace per variant
and batch size (open in https://ui.perfetto.dev).

    python benchmarks/gpu_profile.py --params benchmarks/variants-fp8.yaml --variants fp16_cudagraphs,fp8_static \
        --from-config .device/models/gpt2 --batch-sizes 16,64 --seq-len 128 --out benchmarks/out/profile
    python benchmarks/gpu_profile.py --traces benchmarks/out/profile --out benchmarks/out/profile   # tables only
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
import yaml


def kernel_table(trace: Path) -> tuple[list[tuple[str, int, float]], float]:
    """(kernel name, calls, total microseconds) of the GPU kernels of a Chrome trace, largest first, and the total."""
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for event in json.loads(trace.read_text())["traceEvents"]:
        if event.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy"):
            rec = totals[event["name"]]
            rec[0] += 1
            rec[1] += float(event.get("dur", 0.0))
    rows = sorted(((n, c, t) for n, (c, t) in totals.items()), key=lambda r: -r[2])
    return rows, sum(t for _, _, t in rows)


def table(title: str, trace: Path, top: int) -> list[str]:
    rows, total = kernel_table(trace)
    by_cat: dict[str, float] = defaultdict(float)
    for n, _, t in rows:
        by_cat[category(n)] += t
    lines = [f"## {title}: {total / 1000:.3f} ms of kernel time", "", "| where | ms | share |", "|---|---|---|"]
    lines += [f"| {c} | {t / 1000:.3f} | {100 * t / total:.0f}% |" for c, t in sorted(by_cat.items(), key=lambda kv: -kv[1])]
    lines += ["", "| kernel | calls | ms |", "|---|---|---|"]
    lines += [f"| `{n[:90]}` | {c} | {t / 1000:.3f} |" for n, c, t in rows[:top]]
    return lines + [""]


def category(name: str) -> str:
    n = name.lower()
    if "gemm8" in n or "norm_codes" in n:
        return "ptqflow Triton (fused GEMM / norm)"
    if "flash" in n or "fmha" in n or "sdpa" in n or "attention" in n:
        return "attention"
    if "gemm" in n or "cutlass" in n or "nvjet" in n or "xmma" in n:
        return "GEMM (cuBLAS)"
    if n.startswith("triton"):
        return "Inductor Triton (elementwise / norms)"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", help="variants file (to profile)")
    ap.add_argument("--variants", help="comma-separated variant names (to profile)")
    ap.add_argument("--from-config", help="model config folder (to profile)")
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--traces", help="only tabulate the *.trace.json already in this folder (no GPU needed)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.traces:
        lines = ["# Kernel time per forward (from the Chrome traces in this folder)", ""]
        for trace in sorted(Path(args.traces).glob("*.trace.json")):
            lines += table(trace.name.removesuffix(".trace.json"), trace, args.top)
    else:
        lines = profile(args, out)
    (out / "kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def profile(args, out: Path) -> list[str]:
    from ptqflow.batches import random_batch
    from ptqflow.benchmark import CALIBRATION_ROWS, build_from_config
    from ptqflow.calibration import random_rows
    from ptqflow.quantize import load_variant, quantize_variant

    every = yaml.safe_load(Path(args.params).read_text())["variants"]
    device = torch.device("cuda")
    lines = [f"# Kernel time per forward ({torch.cuda.get_device_name()}, torch {torch.__version__}, seq {args.seq_len})", ""]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        info = build_from_config(args.from_config, {}, src)
        calibration = partial(random_rows, CALIBRATION_ROWS, args.seq_len, info["vocab_size"], info["pad_token_id"])
        for name in args.variants.split(","):
            raw = every[name]
            quantize_variant(name, raw, src, Path(tmp) / name, device, calibration=calibration)
            model, _ = load_variant(name, raw, Path(tmp) / name, device)  # compiled as the variant says
            fused = getattr(model, "ptqflow_runtime", {}).get("fused")
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                batch = {k: v.to(device) for k, v in random_batch(bs, args.seq_len, info["vocab_size"]).items()}
                with torch.inference_mode():
                    for _ in range(5):
                        model(**batch)
                    torch.cuda.synchronize()
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
                        model(**batch)
                        torch.cuda.synchronize()
                trace = out / f"{name}-b{bs}.trace.json"
                prof.export_chrome_trace(str(trace))
                title = f"{name}, batch {bs}" + (f" (fused: {fused['norms']} norms, {fused['activations']} activations)" if fused else "")
                lines += table(title, trace, args.top)
                print(title, flush=True)
            del model
            torch.cuda.empty_cache()
    return lines


if __name__ == "__main__":
    main()
