#!/usr/bin/env bash
# Issue 15's GPU figures (static FP8 / INT8 W8A8), on the lent GPU machine (see ../shared/DEVICE.md), from the
# repository root. Parts (default: all, in this order):
#   tests:    the fp8 / int8_static kernel tests (float64 reference, error bounds) on the card
#   shapes:   per-projection GEMM times, bf16 vs fp8 vs int8 (benchmarks/gemm_shapes.py)
#   epilogue: the FFN-up product alone: cuBLAS vs the Triton kernels, bare and with GELU + codes (benchmarks/gemm8_epilogue.py)
#   accuracy: the default pipeline's fine-tuned model (models/finetuned, data/prepared carried from a CPU
#             `make run`; or $ACC_MODEL, $ACC_DATA) quantized (validation rows calibrate) and scored on the 7,600 test rows by the
#             pipeline's own stage scripts; McNemar against fp32 by ptqflow.report.compare_all
#   speed:    GPT-2 small (124M, from its config), batch 16 and 64 x 128 tokens, one `ptqflow bench` run
#   profile:  torch.profiler kernel tables and Chrome traces of one b16 and one b64 forward (benchmarks/gpu_profile.py)
# Needs: wheels of datasets, dill, multiprocess, xxhash, fsspec in $WHEELS; GPT-2's config in .device/models/gpt2.
set -uo pipefail
OUT=${OUT:-benchmarks/out}
WHEELS=${WHEELS:-.whl2}
PARTS=${*:-tests shapes accuracy speed}
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PTQFLOW_TRACKING=0 PTQFLOW_MIRROR=$PWD/.device HF_HUB_OFFLINE=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/card.txt"
A=benchmarks/variants-w8a8-accuracy.yaml
for part in $PARTS; do
  case $part in
    tests)
      timeout ${TESTS_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider -m gpu ${TESTS:-tests/test_fp8.py tests/test_int8_static.py tests/test_fusion.py tests/test_cuda_graph.py} 2>&1 | tail -15 | tee "$OUT/tests.txt" ;;
    shapes)
      timeout 240 python3 benchmarks/gemm_shapes.py --out "$OUT/gemm-shapes.json" | tee "$OUT/gemm-shapes.md" ;;
    epilogue)
      TRITON_PRINT_AUTOTUNING=1 timeout ${EPILOGUE_TIMEOUT:-150} python3 benchmarks/gemm8_epilogue.py --out "$OUT/gemm8-epilogue.json" 2>&1 |
        tee "$OUT/gemm8-epilogue.log" | grep "^|" | tee "$OUT/gemm8-epilogue.md" ;;
    accuracy)
      mkdir -p "$OUT/accuracy/metrics" "$OUT/accuracy/predictions"
      for v in ${ACCURACY_VARIANTS:-fp32 fp16 fp8_static fp8_static_fused fp8_dynamic int8_static int8_static_fused fp8_static_keep_attn_proj}; do
        python3 stages/quantize.py --params $A --variant "$v" --out "/tmp/q/$v" --no-tracking \
            --model "${ACC_MODEL:-models/finetuned}" --data "${ACC_DATA:-data/prepared}" >/dev/null &&
          python3 stages/evaluate.py --params $A --variant "$v" --artifact "/tmp/q/$v" --no-tracking --data "${ACC_DATA:-data/prepared}" \
            --details "$OUT/accuracy/metrics/$v.json" --predictions "$OUT/accuracy/predictions/$v.csv" 2>&1 | grep '^evaluate@'
      done
      python3 - "$OUT/accuracy" <<'PY' | tee "$OUT/accuracy/mcnemar.md"
import json, sys
from pathlib import Path
from ptqflow.config import ReportParams
from ptqflow.report import compare_all
root = Path(sys.argv[1])
metrics = {p.stem: json.loads(p.read_text()) for p in (root / "metrics").glob("*.json")}
for v, m in sorted(metrics.items()):
    if "skipped" in m:
        print(f"{v}: skipped: {m['skipped']}")
names = sorted(v for v, m in metrics.items() if "skipped" not in m)
stats = compare_all(names, root / "predictions", ReportParams())
(root / "mcnemar.json").write_text(json.dumps(stats, indent=2) + "\n")
print("| variant | accuracy | change vs fp32 (points) [95% CI] | McNemar p |\n|---|---|---|---|")
for v in names:
    acc = metrics[v]["accuracy"]
    s = stats.get(v) or {}
    if not s:
        print(f"| {v} | {acc:.4f} | baseline | - |"); continue
    print(f"| {v} | {acc:.4f} | {100 * s['delta_accuracy']:+.2f} [{100 * s['delta_ci95_low']:+.2f}, {100 * s['delta_ci95_high']:+.2f}] | {s['mcnemar_p']:.3g} |")
PY
      rm -r "$OUT/accuracy/predictions" ;;
    speed)
      timeout ${SPEED_TIMEOUT:-520} python3 -m ptqflow bench --params benchmarks/variants-fp8.yaml \
        --variants ${SPEED_VARIANTS:-fp16_cudagraphs,fp8_static,fp8_static_fused,fp8_static_fused_norm,int8_static,int8_static_fused} \
        --from-config .device/models/gpt2 --batch-sizes 16,64 --seq-len 128 --rounds ${ROUNDS:-12} \
        --baseline fp16_cudagraphs --half '' --device cuda --out "$OUT/gpu-w8a8-124m" 2>&1 | grep -v Warning | tail -25 ;;
    profile)
      timeout ${PROFILE_TIMEOUT:-300} python3 benchmarks/gpu_profile.py --params benchmarks/variants-fp8.yaml \
        --variants ${PROFILE_VARIANTS:-fp16_cudagraphs,fp8_static,fp8_static_fused,fp8_static_fused_norm} --from-config .device/models/gpt2 \
        --batch-sizes 16,64 --seq-len 128 --out "$OUT/profile" 2>&1 | grep -v Warning | grep -v "^|" | tail -12 ;;
  esac
done
