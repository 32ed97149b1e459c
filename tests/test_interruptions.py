"""Nothing half-written, interrupted training resumes, and a seeded run repeats exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptqflow.config import TrainParams
from ptqflow.io import atomic_dir

from .conftest import ROOT


def test_failed_write_leaves_the_previous_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous result")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("stage failed mid-write")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the temporary folder is gone too


def test_killed_write_never_replaces_the_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous result")
    script = textwrap.dedent(f"""
        import time
        from ptqflow.io import atomic_dir
        with atomic_dir({str(target)!r}) as tmp:
            (tmp / "part.bin").write_bytes(b"x" * 100)
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in target.iterdir()] == ["old.txt"]


def _finetune_cmd(params: Path, data: Path, out: Path, ckpt: Path) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "finetune.py"), "--no-tracking", "--params", str(params),
            "--data", str(data), "--out", str(out / "model"), "--metrics", str(out / "train-headline.json"),
            "--details", str(out / "train.json"), "--checkpoints", str(ckpt)]


@pytest.mark.slow
def test_killed_finetune_resumes_from_its_checkpoint_and_ends_the_same(tmp_path, tiny_prepared, tiny_model_params):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = {"base": tiny_model_params.base, "init": "scratch", "pretrained": "gpt2",
                       "overrides": {"n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 64}}
    params["train"].update(epochs=4, batch_size=16, lr=3e-3, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PTQFLOW_TRACKING": "0"}

    ref = tmp_path / "ref"
    subprocess.run(_finetune_cmd(tmp_path / "params.yaml", tiny_prepared, ref, tmp_path / "ck-ref"), check=True, env=env,
                   capture_output=True)

    run = tmp_path / "run"
    ckpt = tmp_path / "ck-run"
    proc = subprocess.Popen(_finetune_cmd(tmp_path / "params.yaml", tiny_prepared, run, ckpt), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(ckpt.glob("*/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists()  # nothing half-written in place of the model

    subprocess.run(_finetune_cmd(tmp_path / "params.yaml", tiny_prepared, run, ckpt), check=True, env=env, capture_output=True)
    resumed = json.loads((run / "train.json").read_text())
    reference = json.loads((ref / "train.json").read_text())
    assert resumed["resumed_from_checkpoint"] is True and reference["resumed_from_checkpoint"] is False
    assert resumed["val_accuracy"] == reference["val_accuracy"]
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)
    a, b = load_file(str(run / "model" / "model.safetensors")), load_file(str(ref / "model" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not list(ckpt.glob("*/checkpoint-*"))  # checkpoints are removed once the model is saved


def test_seeded_training_repeats_exactly(tmp_path, tiny_prepared, tiny_model_params):
    from ptqflow.train import finetune

    params = TrainParams(lr=3e-3, batch_size=16, epochs=1, device="cpu", seed=7)
    m1 = finetune(tiny_model_params, params, tiny_prepared, tmp_path / "a", tmp_path / "ca")
    m2 = finetune(tiny_model_params, params, tiny_prepared, tmp_path / "b", tmp_path / "cb")
    assert m1["val_accuracy"] == m2["val_accuracy"] and m1["val_loss"] == m2["val_loss"]
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert Path(tmp_path / "a" / "config.json").is_file()
