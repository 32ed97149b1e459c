"""Shared fixtures: the offline assets in ../shared, a tiny GPT-2 config, a tiny trained model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PTQFLOW_MIRROR", ROOT.parent / "shared")).resolve()
AG_NEWS = SHARED / "data" / "ag_news"
GPT2 = SHARED / "models" / "gpt2"
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64}

os.environ.setdefault("PTQFLOW_TRACKING", "0")  # tests that need MLflow switch it on themselves
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each (and for the stages they start)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (AG_NEWS / "train.csv").is_file() or not (GPT2 / "tokenizer.json").is_file():
        pytest.fail(f"offline assets not found at {SHARED} (set PTQFLOW_MIRROR)")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer(shared):
    from ptqflow.modeling import load_tokenizer

    return load_tokenizer(GPT2)


@pytest.fixture(scope="session")
def tiny_model_params(shared):
    from ptqflow.config import ModelParams

    return ModelParams(base=str(GPT2), init="scratch", overrides=dict(TINY))


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, tokenizer, shared) -> Path:
    """AG News capped to 480 train / 256 test rows, 32 tokens."""
    from ptqflow.config import DataParams
    from ptqflow.data import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(DataParams(source=str(AG_NEWS), max_train_samples=480, max_test_samples=256, max_length=32), tokenizer, out)
    return out


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, tiny_prepared, tiny_model_params) -> Path:
    """A 2-layer, 64-wide GPT-2 classifier trained briefly on the tiny split (seconds on CPU)."""
    from ptqflow.config import TrainParams
    from ptqflow.train import finetune

    root = tmp_path_factory.mktemp("finetuned")
    # float32 in random order, SDPA: the same tiny model on every CPU kind (bf16 autocast depends on the CPU's flags)
    train = TrainParams(lr=3e-3, batch_size=16, epochs=3, device="cpu", precision="fp32", group_by_length=False, attention="sdpa")
    finetune(tiny_model_params, train, tiny_prepared, root / "model", root / "ckpt")
    return root / "model"


@pytest.fixture(scope="session")
def fp32_artifact(tmp_path_factory, tiny_trained) -> Path:
    """The tiny trained model as the `fp32` variant's artifact (what other variants are compared with)."""
    from ptqflow.quantize import quantize_variant

    out = tmp_path_factory.mktemp("fp32") / "fp32"
    quantize_variant("fp32", {"scheme": "fp32"}, tiny_trained, out)
    return out


@pytest.fixture(scope="session")
def e2e_project(tmp_path_factory, shared):
    """One `dvc repro` of a tiny copy of the project, shared by the end-to-end tests (pipeline_project.py); under
    pytest-xdist they are one class (test_pipeline.py::TestOneRepro; `--dist loadscope`), so one worker runs it once."""
    from .pipeline_project import SKIPPED, VARIANTS, make_project, run

    root = tmp_path_factory.mktemp("project")
    env = make_project(root, shared, VARIANTS + SKIPPED)
    out = run(["dvc", "repro"], root, env)
    return root, env, out


@pytest.fixture(scope="module", params=list(FAMILIES))
def fresh_family(request, tmp_path_factory):
    """(family, folder holding `model/`: a tiny classifier of that family with fresh weights), for the exported
    runtimes' per-family tests."""
    from ptqflow.benchmark import build_from_config

    from .families import make_base

    root = tmp_path_factory.mktemp(f"fresh-{request.param}")
    build_from_config(str(make_base(request.param, GPT2, root / "base")), {}, root / "model")
    return request.param, root
