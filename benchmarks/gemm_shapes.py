"""Where the time goes: each projection shape of GPT-2 small at 16 x 128 and 64 x 128 tokens, one layer's
matrix product timed alone on the GPU (20 calls in one CUDA graph, CUDA events, one process, shapes and kinds
interleaved per round):
bfloat16 `F.linear` with bias against the 8-bit schemes' products, all with bias and bf16 out:
- the `fp8` scheme's `torch._scaled_mm` (per-tensor static scales) with and without cuBLASLt fast accumulation;
- the `int8_static` scheme's Triton kernel (int8 x int8 -> int32, rescale + bias + cast in the epilogue);
- `torch._int_mm` followed by the float rescale (the int32 result through memory: what the fusion saves);
with the activation quantization (multiply + saturating cast, eager, unfused) counted apart.

    python benchmarks/gemm_shapes.py --out benchmarks/fp8-h100/gemm-shapes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ptqflow.runtimes.gemm8 import int8_gemm_rescale

SHAPES = {"attn.c_attn": (768, 2304), "attn.c_proj": (768, 768), "mlp.c_fc": (768, 3072), "mlp.c_proj": (3072, 768)}


def captured(fn, reps: int) -> torch.cuda.CUDAGraph:
    """`reps` calls of fn captured in one CUDA graph (after a warm-up that also runs Triton's autotuning)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return graph


def timed(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    """ms per call of a replay: GPU time, as under `compile: reduce-overhead`, without the Python launch cost
    (which would hide a Triton or unfused kernel behind the CPU)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    dev = torch.device("cuda")
    f8 = torch.float8_e4m3fn
    kinds: dict[str, dict] = {}
    for tokens in (2048, 8192):
        for name, (k, n) in SHAPES.items():
            x = torch.randn(tokens, k, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.05
            b = torch.randn(n, device=dev, dtype=torch.bfloat16)
            s = torch.tensor(float(x.abs().max()) / 448, device=dev)
            sw = torch.tensor(float(w.abs().max()) / 448, device=dev)
            wq = (w.float() / sw).to(f8)
            xq = (x.float() / s).clamp(-448, 448).to(f8)
            xi = torch.randint(-127, 128, (tokens, k), device=dev, dtype=torch.int8)
            wi = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8)
            swi = torch.rand(n, device=dev) * 1e-3
            key = f"{name} {tokens}x{k}x{n}"
            kinds[key] = {
                "bf16 linear": lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b),
                "fp8 gemm": lambda xq=xq, wq=wq, s=s, sw=sw, b=b: torch._scaled_mm(xq, wq.t(), scale_a=s, scale_b=sw, bias=b, out_dtype=torch.bfloat16),
                "fp8 gemm fast-accum": lambda xq=xq, wq=wq, s=s, sw=sw, b=b: torch._scaled_mm(xq, wq.t(), scale_a=s, scale_b=sw, bias=b, out_dtype=torch.bfloat16, use_fast_accum=True),
                "int8 triton fused": lambda xi=xi, wi=wi, s=s, swi=swi, b=b: int8_gemm_rescale(xi, wi, s, swi, b),
                "int8 _int_mm + rescale": lambda xi=xi, wi=wi, s=s, swi=swi, b=b:
                    (torch._int_mm(xi, wi.t()).float() * (s * swi) + b.float()).to(torch.bfloat16),
                "quantize x (eager)": lambda x=x, s=s: (x.float() / s).clamp(-448, 448).to(f8),
            }
    times: dict[str, dict[str, list[float]]] = {key: {kind: [] for kind in fns} for key, fns in kinds.items()}
    graphs = {key: {kind: captured(fn, 20) for kind, fn in fns.items()} for key, fns in kinds.items()}
    for by in graphs.values():
        for graph in by.values():
            timed(graph, 20)
    for _ in range(args.rounds):
        for key, by in graphs.items():
            for kind, graph in by.items():
                times[key][kind].append(timed(graph, 20))
    rows = {}
    print("| shape (tokens x K x N) | bf16 (ms) | fp8 (ms) | fp8 fast-accum (ms) | int8 Triton fused (ms) | int8 _int_mm + rescale (ms) "
          "| quantize x, eager (ms) | bf16 / fp8 fast-accum | bf16 / int8 Triton |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, by in times.items():
        med = {kind: statistics.median(v) for kind, v in by.items()}
        rows[key] = {kind: round(v, 5) for kind, v in med.items()}
        print(f"| {key} | {med['bf16 linear']:.4f} | {med['fp8 gemm']:.4f} | {med['fp8 gemm fast-accum']:.4f} | "
              f"{med['int8 triton fused']:.4f} | {med['int8 _int_mm + rescale']:.4f} | {med['quantize x (eager)']:.4f} | "
              f"{med['bf16 linear'] / med['fp8 gemm fast-accum']:.2f}x | {med['bf16 linear'] / med['int8 triton fused']:.2f}x |")
    out = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "protocol": f"median over {args.rounds} rounds of the mean of 20 calls captured in one CUDA graph, after warm-up",
           "ms": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
