"""The FFN-up product of GPT-2 small (768 -> 3072) at 16 x 128 and 64 x 128 tokens, fp8, timed alone on the GPU
(20 calls in one CUDA graph, CUDA events, one process, kinds interleaved per round):
- cuBLAS (`torch._scaled_mm`, fast accumulation, bias, bf16 out): the bare product, the floor to beat;
- cuBLAS + GELU + e4m3 codes as one Inductor kernel (what `fp8_static` runs);
- ptqflow's Triton kernel (runtimes/gemm8.py), pointer loads and TMA + persistent, bare (bf16 out) and with the
  GELU and the next layer's codes in the epilogue (what `fp8_static_fused` runs).

    python benchmarks/gemm8_epilogue.py --out $OUT/gemm8-epilogue.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gemm_shapes import captured, timed  # noqa: E402

from ptqflow.runtimes.gemm8 import _launch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    dev, f8 = torch.device("cuda"), torch.float8_e4m3fn
    k, n = 768, 3072
    kinds: dict[str, dict] = {}
    for tokens in (2048, 8192):
        xq = (torch.randn(tokens, k, device=dev) * 30).clamp(-448, 448).to(f8)
        wq = (torch.randn(n, k, device=dev) * 30).clamp(-448, 448).to(f8)
        s_x, s_w = torch.tensor(1e-3, device=dev), torch.full((n,), 1e-3, device=dev)
        bias = torch.randn(n, device=dev).to(torch.bfloat16)
        s_out = torch.tensor(0.01, device=dev)

        @torch.compile
        def gelu_codes(y, s):
            return (torch.nn.functional.gelu(y.float(), approximate="tanh") / s).clamp(-448, 448).to(f8)

        def cublas(xq=xq, wq=wq, s_x=s_x, bias=bias):
            return torch._scaled_mm(xq, wq.t(), scale_a=s_x, scale_b=s_x, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True)

        key = f"{tokens}x{k}x{n}"
        kinds[key] = {
            "cuBLAS bare": cublas,
            "cuBLAS + Inductor GELU + codes": lambda c=cublas, s=s_out: gelu_codes(c(), s),
            "Triton pointer bare": lambda a=(xq, wq, s_x, s_w, bias, s_out): _launch(*a, 0, 0, tma=False),
            "Triton TMA bare": lambda a=(xq, wq, s_x, s_w, bias, s_out): _launch(*a, 0, 0, tma=True),
            "Triton pointer GELU + codes": lambda a=(xq, wq, s_x, s_w, bias, s_out): _launch(*a, 1, 1, tma=False),
            "Triton TMA GELU + codes": lambda a=(xq, wq, s_x, s_w, bias, s_out): _launch(*a, 1, 1, tma=True),
        }
    graphs = {(key, kind): captured(fn, args.reps) for key, fns in kinds.items() for kind, fn in fns.items()}
    times: dict[tuple, list[float]] = {kk: [] for kk in graphs}
    for _ in range(args.rounds):
        for kk, g in graphs.items():
            times[kk].append(timed(g, args.reps) * 1000.0)
    rows = []
    print("| shape (M x K x N) | kind | median us per call | vs cuBLAS bare |\n|---|---|---|---|")
    for (key, kind), ts in times.items():
        med, base = statistics.median(ts), statistics.median(times[(key, "cuBLAS bare")])
        rows.append({"shape": key, "kind": kind, "median_us": round(med, 2), "rounds_us": [round(t, 2) for t in ts]})
        print(f"| {key} | {kind} | {med:.1f} | {med / base:.2f}x |")
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
