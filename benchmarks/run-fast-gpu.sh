#!/usr/bin/env bash
# Issue 7's GPU figures, on the lent GPU machine (see ../shared/DEVICE.md), from the repository root:
#   part "speed":    GPT-2 small (124M, from its config, fresh weights), batch 16 and 64 x 128 tokens,
#                    10 warm-up + 50 timed passes; each group is one `ptqflow bench` run (ratios within a file
#                    are from one process on one card). Compilation time is the `first call` column.
#   part "accuracy": the default pipeline's fine-tuned model (models/finetuned, data/prepared carried from a
#                    CPU `make run`), quantized and evaluated on the GPU by the pipeline's own stage scripts.
# Needs: wheels of torchao (+ bitsandbytes for nf4) and datasets/dill/multiprocess in $WHEELS, GPT-2's config in
# .device/gpt2. Writes under $OUT (default benchmarks/out).
set -uo pipefail
OUT=${OUT:-benchmarks/out}
WHEELS=${WHEELS:-.whl}
PARTS=${*:-eager speed autotune accuracy}
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PTQFLOW_TRACKING=0
P=benchmarks/variants-fast.yaml
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"

bench() {  # bench NAME SECONDS VARIANTS
  timeout "$2" python3 -m ptqflow bench --params $P --variants "$3" --from-config .device/gpt2 \
    --batch-sizes 16,64 --seq-len 128 --out "$OUT/$1" 2>&1 | grep '^bench '
}
evaluate() {  # evaluate VARIANT
  python3 stages/quantize.py --params $P --variant "$1" --out "/tmp/q/$1" --no-tracking >/dev/null 2>&1 &&
    python3 stages/evaluate.py --params $P --variant "$1" --artifact "/tmp/q/$1" --no-tracking \
      --details "$OUT/accuracy/metrics/$1.json" --predictions "$OUT/accuracy/predictions/$1.csv" 2>&1 | grep '^evaluate@'
}
for part in $PARTS; do
  case $part in
    eager)
      bench gpu-fast-eager-124m 220 fp32,fp16,bf16,int8_dynamic,int8_wo_ao,int4_wo_ao,fp8_ao,int8_scratch_emb4,nf4_bnb_emb4 ;;
    speed)
      bench gpu-fast-compiled-124m 290 fp16,fp16_compiled,int8_dynamic_compiled,fp16_cudagraphs,int8_dynamic_cudagraphs
      bench gpu-fast-ao-124m 330 fp16,bf16_cudagraphs,int8_wo_ao_cudagraphs,int4_wo_ao_cudagraphs,fp8_ao_cudagraphs ;;
    ao)
      bench gpu-fast-ao-124m 330 fp16,bf16_cudagraphs,int8_wo_ao_cudagraphs,int4_wo_ao_cudagraphs,fp8_ao_cudagraphs ;;
    ao16)  # the <= 1.0 ms question only: batch 16, the CUDA-graph variants
      timeout 300 python3 -m ptqflow bench --params $P --variants fp16_cudagraphs,fp8_ao_cudagraphs,int4_wo_ao_cudagraphs \
        --from-config .device/gpt2 --batch-sizes 16 --seq-len 128 --out "$OUT/gpu-fast-ao16-124m" 2>&1 | grep '^bench ' ;;
    autotune)
      bench gpu-fast-autotune-124m 400 fp16,fp16_autotune,int8_dynamic_autotune ;;
    accuracy)
      for v in ${ACCURACY_VARIANTS:-fp32 fp16 bf16 int8_dynamic int8_dynamic_cudagraphs fp16_cudagraphs int8_wo_ao int4_wo_ao fp8_ao fp8_ao_cudagraphs}; do
        evaluate $v
      done
      tar czf "$OUT/accuracy.tgz" -C "$OUT" accuracy && rm -r "$OUT/accuracy" ;;  # one file: the device returns few
  esac
done
