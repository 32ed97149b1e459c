#!/usr/bin/env bash
# The report's configuration at its scale without the Hub (params-paper-scratch.yaml), on a 2-GPU machine:
# fine-tune on 1 GPU and on 2 GPUs (torchrun, DDP through the HF Trainer, same effective batch), evaluate the
# 2-GPU model in fp32 and every variant of the 1-GPU model, time them all interleaved, write the report. Plain Python: no DVC/MLflow
# needed. Results go to $OUT (default benchmarks/out); intermediate models to $WORK (default .device/run).
set -euo pipefail
OUT=${OUT:-benchmarks/out}; W=${WORK:-.device/run}; mkdir -p "$OUT" "$W"
export PTQFLOW_TRACKING=0 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast stays off
P=benchmarks/params-paper-scratch.yaml
P2=benchmarks/params-paper-scratch-2gpu.yaml
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.txt"
python3 -c "import torch, transformers, datasets, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'bitsandbytes', b.__version__)" | tee "$OUT/versions.txt"

python3 stages/prepare.py --params $P --out $W/prepared --metrics $W/data-rows.json --details $W/data.json
CUDA_VISIBLE_DEVICES=0 python3 stages/finetune.py --params $P --data $W/prepared --out $W/ft1 \
  --metrics $W/train-1gpu-rows.json --details $OUT/train-1gpu.json --checkpoints $W/ck1
torchrun --nproc-per-node 2 stages/finetune.py --params $P2 --data $W/prepared --out $W/ft2 \
  --metrics $W/train-2gpu-rows.json --details $OUT/train-2gpu.json --checkpoints $W/ck2

export CUDA_VISIBLE_DEVICES=0
python3 stages/quantize.py --params $P --variant fp32 --model $W/ft2 --out $W/q2/fp32
python3 stages/evaluate.py --params $P --variant fp32 --data $W/prepared --artifact $W/q2/fp32 \
  --details $W/eval-2gpu/fp32.json --predictions $W/pred-2gpu/fp32.csv
for v in $(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('$P'))['variants']))"); do
  python3 stages/quantize.py --params $P --variant "$v" --model $W/ft1 --out $W/q1/"$v"
  python3 stages/evaluate.py --params $P --variant "$v" --data $W/prepared --artifact $W/q1/"$v" \
    --details $W/eval/"$v".json --predictions $W/pred/"$v".csv
done
python3 stages/benchmark.py --params $P --artifacts $W/q1 --data $W/prepared --out $W/benchmark.json
python3 stages/report.py --params $P --details-dir $W/eval --predictions-dir $W/pred --benchmark $W/benchmark.json \
  --comparison $W/metrics/comparison.json --metrics-dir $W/metrics/eval --pareto $W/pareto.csv --out $OUT/report.md \
  --figures $W/figures
tar czf "$OUT/metrics.tgz" -C "$W" data.json eval metrics benchmark.json eval-2gpu figures
