# Two commands: `make run` (set up, fetch inputs, run the pipeline, print the table) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
MIRROR ?= ../shared
PYTEST_ARGS ?=
export PATH := $(BIN):$(PATH)

.PHONY: run test setup assets repro table clean-outputs help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed  ## create .venv with the pinned dependencies

assets: setup  ## copy AG News and the GPT-2 tokenizer/config from $(MIRROR), else the Hugging Face Hub
	$(BIN)/ptqflow assets --mirror $(MIRROR)

repro: assets  ## run the DVC pipeline (only what changed)
	$(BIN)/dvc repro

table:  ## print the comparison table from metrics/eval/
	@$(BIN)/ptqflow table

run: repro table  ## set up, fetch the inputs, run the pipeline, print the comparison table

test: setup  ## run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)
