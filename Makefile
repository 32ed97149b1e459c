# Two commands: `make run` (set up, fetch inputs, run the pipeline, print the table) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
MIRROR ?= ../shared
PYTEST_ARGS ?= -n 2 --dist loadscope  # pytest-xdist: two workers (the machines have 2 cores); a module or class stays in one
export PATH := $(BIN):$(PATH)
export PTQFLOW_MIRROR := $(abspath $(MIRROR))

.PHONY: run test setup repro table docs docs-serve params default all hurts gpu reference lowbit gpt2 paper ui serve loadtest help

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq --no-compile -r requirements.lock  # -qq: errors only (not the warnings about mirror folders this machine lacks)
	$(BIN)/python -m pip install -qq --no-compile --no-deps -e .
	@# bytecode on both cores (pip compiles on one: 112 s against 27 + 40 s here); like pip, files that are not Python 3 are passed over
	$(BIN)/python -m compileall -qq -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || true
	touch $@

setup: $(VENV)/.installed  ## create .venv with the pinned dependencies

repro: setup  ## run the DVC pipeline (only what changed); its first stage, assets, copies the inputs from $(MIRROR) or the Hub
	$(BIN)/dvc repro

table:  ## print the comparison table from metrics/comparison.json
	@$(BIN)/ptqflow table

run: repro table  ## set up, fetch the inputs, run the pipeline, print the comparison table

ui: setup  ## mlflow ui on the project's store; prints the address of the ptqflow runs table
	$(BIN)/ptqflow ui

serve: setup  ## serve the packaged model with MLflow's scoring server on 127.0.0.1 (Ctrl-C stops it)
	$(BIN)/ptqflow serve

loadtest: setup  ## serve the recommended variant and fp32 side by side, load them (1/4/16 clients), try malformed requests
	$(BIN)/ptqflow loadtest --variants $(or $(VARIANTS),recommended,fp32) --out benchmarks/serve/loadtest

params: setup  ## write params.yaml again from conf/ (the default variant set), after editing conf/
	$(BIN)/python -c "from ptqflow.variant_sets import write_params; write_params('params.yaml')"

# Named variant sets (conf/variants/<set>.yaml), each a DVC experiment in the workspace: `dvc exp show` and
# `dvc metrics diff` compare them; params.yaml holds the set afterwards (`make default` goes back).
default all hurts gpu reference lowbit: setup
	$(BIN)/dvc exp run -n $@-$$(date +%m%d-%H%M%S) -S variants=$@
	@$(BIN)/ptqflow table

default:  ## the focused default set as an experiment (what params.yaml holds when committed)
all:  ## every variant (30+; about 3x the default's time)
hurts:  ## when quantization hurts: 4-bit activations, recovery, budgeted searches, sensitivity
gpu:  ## what a CUDA machine should run (fp16, bitsandbytes, fp8 / int8 static, int4, ORT fp16)
reference:  ## the reference report's study: fp32 and its three quantized variants
lowbit:  ## calibrated low-bit weights: bits vs accuracy for RTN / GPTQ / AWQ, NNCF int4, ORT MatMulNBits, the size search

# The reference study as it ran offline before the pretrained default: GPT-2 (2 layers, 128 wide) built from the
# GPT-2 config with fresh weights, lr 1e-3, batch 32, 2 epochs, float32 training in random order; all variants.
# A DVC experiment beside the default (dvc exp show / dvc metrics diff).
GPT2_PARAMS := -S model.init=scratch -S '+model.overrides.n_layer=2' -S '+model.overrides.n_embd=128' \
	-S '+model.overrides.n_head=4' -S '+model.overrides.n_positions=128' -S train.lr=0.001 -S train.batch_size=32 \
	-S train.epochs=2 -S train.warmup_ratio=0.05 -S train.precision=fp32 -S train.group_by_length=false

gpt2: setup  ## the reference study's small GPT-2 from scratch, offline (DVC experiment `gpt2`)
	$(BIN)/dvc exp run -n gpt2 $(GPT2_PARAMS)

# The reference report's own study: pretrained gpt2 (weights brought by `ptqflow assets --model`) and the full
# fancyzhx/ag_news from the Hub, AdamW lr 2e-5, batch 16, 3 epochs, max length 128, all variants.
PAPER_PARAMS := -S data.source=fancyzhx/ag_news -S data.max_length=128 -S data.val_fraction=0.05 \
	-S model.init=pretrained -S model.pretrained=models/base/gpt2-pretrained \
	-S train.lr=2e-5 -S train.batch_size=16 -S train.epochs=3 -S train.warmup_ratio=0.0 -S train.weight_decay=0.0

paper: setup  ## the report's configuration (needs the Hub and a GPU); fails fast offline
	$(BIN)/ptqflow hub-check gpt2 fancyzhx/ag_news
	$(BIN)/ptqflow assets --model gpt2=models/base/gpt2-pretrained
	$(BIN)/dvc exp run -n paper $(PAPER_PARAMS)

# MkDocs 1.6 and Material print a banner about their successors on every build: not a problem of this site
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := true

docs: setup  ## build the documentation site into build/site (strict: a broken link or a warning fails)
	$(BIN)/mkdocs build --strict --quiet

docs-serve: setup  ## serve the documentation site on http://127.0.0.1:8000 while editing
	$(BIN)/mkdocs serve

test: setup  ## lint the GitHub workflow, build the docs strictly, run the test suite
	$(BIN)/actionlint .github/workflows/*.yml
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest $(PYTEST_ARGS)
