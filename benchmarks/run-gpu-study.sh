#!/usr/bin/env bash
# The GPU study end to end (issue 32) on the lent card (../shared/DEVICE.md): every stage's own script, in dvc.yaml's
# order, with tracking off and no DVC, for the `gpu` variant set on `make gpt2`'s model (GPT-2 built from its
# config, 2 layers x 128 wide, fresh weights: nothing to download), ending in the report and the package.
# Parameters: benchmarks/gpu-study/params.yaml (the composed `gpu` set with these overrides:
#   model.init=scratch +model.overrides.{n_layer=2,n_embd=128,n_head=4,n_positions=128} train.lr=0.001
#   train.batch_size=32 train.epochs=2 train.warmup_ratio=0.05 train.precision=fp32 train.group_by_length=false
#   data.max_test_samples=null package.registered_model=null benchmark.batch_sizes=[16,64] benchmark.rounds=12).
# Every variant of the set is evaluated on the 7,600 test rows or skipped with its reason (a missing package such as
# onnxruntime-gpu, too large to carry, is one). The pretrained all-MiniLM-L6-v2 is not carried: its 90 MB of float32
# weights (45 MB in half precision) do not fit beside bitsandbytes' 41 MB wheel in one call's 64 MiB.
# Needs, from the repository root here: wheels in $WHEELS (bitsandbytes, torchao, datasets, dill, multiprocess,
# xxhash, fsspec; cp312 manylinux), AG News and the GPT-2 tokenizer/config copied to .device/ (data/ag_news,
# models/gpt2). Writes $OUT: card.txt, log.txt, report.md, comparison.json, benchmark.json, train.json, figures,
# logs/<variant>.log (the variant chains run $JOBS at a time, default 4: their stage times overlap).
set -uo pipefail
OUT=${OUT:-benchmarks/gpu-study/out}
WHEELS=${WHEELS:-.whl}
P=benchmarks/gpu-study/params.yaml
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PTQFLOW_TRACKING=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" data/raw models/base
cp -r .device/data/ag_news data/raw/ag_news && cp -r .device/models/gpt2 models/base/gpt2
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, bitsandbytes, torchao; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__, 'torchao', torchao.__version__)"
  echo "command: bash benchmarks/run-gpu-study.sh (params $P)"; date -u; } 2>&1 | tee "$OUT/card.txt"
stage() {  # one stage script, timed, its console into the log
  local t0=$SECONDS
  python3 "$@" --params "$P" --no-tracking 2>&1 | grep -v "it/s]\|s/it]" | tail -5
  echo "  ($1 ${*:2}: $((SECONDS - t0)) s)"
}
variant() {  # quantize@v then evaluate@v, their console into $OUT/logs/v.log
  { stage stages/quantize.py --variant "$1"; stage stages/evaluate.py --variant "$1"; } > "$OUT/logs/$1.log" 2>&1
}
VARIANTS=$(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('$P'))['variants']))")
mkdir -p "$OUT/logs"
{
  stage stages/prepare.py
  stage stages/finetune.py
  # the variants' quantize -> evaluate chains are independent (as under `dvc repro`, which may also run them in
  # parallel): $JOBS at a time on the one card; their stage times overlap. The benchmark stage then runs alone.
  for v in $VARIANTS; do
    while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-4}" ]; do sleep 1; done
    variant "$v" &
  done
  wait
  for v in $VARIANTS; do cat "$OUT/logs/$v.log"; done
  stage stages/benchmark.py
  stage stages/report.py
  stage stages/package.py
  python3 -m ptqflow table --params "$P"
} 2>&1 | tee "$OUT/log.txt"
cp reports/report.md metrics/comparison.json reports/benchmark.json reports/train.json "$OUT"/ 2>/dev/null
cp plots/figures/size_latency.png plots/figures/pareto.png "$OUT"/ 2>/dev/null
ls "$OUT"
