"""The variant registry: a variant in params.yaml names a scheme here, plus that scheme's options.

A scheme is a small options dataclass (validated like every params section) and two functions:
`quantize(src_dir, out_dir, options) -> info` writes the artifact from the fine-tuned model, and
`load(artifact_dir, options, device) -> model` loads it for evaluation (never re-quantizing).
Adding a scheme is one module with those functions and one line in `quantize/__init__.py`.

Two things are common to every variant rather than part of a scheme:
- `compile`: run inference through `torch.compile` (`default`, `max-autotune`, or `reduce-overhead`,
  which adds CUDA graphs and so needs CUDA), or `cuda-graph` (Inductor, then the whole forward replayed as one
  CUDA graph per input shape with no per-call guards: runtimes/cuda_graph.py; CUDA only); it does not change
  the artifact.
- where it can run: a scheme's `available(options, device)` returns why it cannot run on a device (a
  CUDA-only kernel on a CPU machine), or None. Such a variant is not quantized or evaluated there: its
  artifact and metrics say `skipped` with the reason, and the report lists it apart. It never falls back
  to another variant.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from ..calibration import Calibration
from ..config import build, to_dict
from ..errors import PtqflowError, VariantSkipped
from ..io import atomic_dir, read_json, write_json
from .common import runtime_device

META_FILE = "ptqflow.json"


CompileMode = Literal["none", "default", "max-autotune", "reduce-overhead", "cuda-graph"]
CUDA_GRAPH_MODES = ("reduce-overhead", "cuda-graph")


def _always(options: Any, device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Scheme:
    name: str
    options: type  # dataclass of the scheme's options
    quantize: Callable[[Path, Path, Any], dict]
    load: Callable[[Path, Any, torch.device], torch.nn.Module]
    description: str
    available: Callable[[Any, torch.device], str | None] = _always  # why it cannot run on a device, or None
    calibrates: bool | Callable[[Any], bool] = False  # quantize() also takes a Calibration (rows of the validation split);
    # a function of the options when only some options need it
    compiles: bool = True  # False: load() gives no PyTorch graph to compile (an ONNX Runtime session, an OpenVINO model)
    loader: str = "ptqflow"  # what loads the artifact without ptqflow: transformers, onnxruntime, openvino, or only ptqflow


SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    if scheme.name in SCHEMES:
        raise ValueError(f"scheme {scheme.name!r} registered twice")
    SCHEMES[scheme.name] = scheme
    return scheme


@dataclass
class RunOptions:
    compile: CompileMode = "none"


COMMON_KEYS = ("scheme", "compile")


def resolve(variant: str, raw: Any) -> tuple[Scheme, Any]:
    """The scheme and validated options of variant `variant` (its mapping under `variants:`)."""
    where = f"variants.{variant}"
    if not isinstance(raw, dict) or "scheme" not in raw:
        raise PtqflowError(f"params.yaml: {where} needs a 'scheme' key (one of {', '.join(SCHEMES)})")
    name = raw["scheme"]
    if name not in SCHEMES:
        raise PtqflowError(f"params.yaml: {where}.scheme {name!r} is not a registered scheme (known: {', '.join(SCHEMES)})")
    scheme = SCHEMES[name]
    if run_options(variant, raw).compile != "none" and not scheme.compiles:
        raise PtqflowError(f"params.yaml: {where}.compile: scheme {name} runs in its own runtime, not torch.compile; remove `compile`")
    options = build(scheme.options, {k: v for k, v in raw.items() if k not in COMMON_KEYS}, where)
    return scheme, options


def run_options(variant: str, raw: dict) -> RunOptions:
    """The options every variant has (`compile`), validated."""
    value = raw.get("compile", "none")
    return build(RunOptions, {"compile": "none" if value is False else value}, f"variants.{variant}")


def unavailable(variant: str, raw: Any, device: torch.device) -> str | None:
    """Why variant `variant` cannot run on `device`, or None when it can."""
    scheme, options = resolve(variant, raw)
    mode = run_options(variant, raw).compile
    if mode in CUDA_GRAPH_MODES and device.type != "cuda":
        return f"compile mode {mode!r} records CUDA graphs and needs a CUDA device; this machine runs on {device.type}"
    return scheme.available(options, device)


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Compile the model's forward with `torch.compile(mode=...)` in place (compilation happens on the first call);
    `cuda-graph`: the model wrapped in a `GraphedModel` (compiled, then captured per input shape on first use)."""
    if mode == "cuda-graph":
        from ..runtimes.cuda_graph import GraphedModel

        return model if isinstance(model, GraphedModel) else GraphedModel(model)
    if mode != "none":
        model.compile(mode=mode)
    return model


def quantize_variant(variant: str, raw: Any, src_dir: str | Path, out_dir: str | Path, device: torch.device | None = None,
                     calibration: Callable[[], Calibration] | None = None, max_drop: float | None = None) -> dict:
    """Write variant `variant`'s artifact to `out_dir` (atomically) with its metadata file; returns the metadata.

    A variant that cannot run on `device` (default: CUDA when present, else CPU) gets a metadata file that
    says `skipped` and why, and no weights. A calibrating scheme calls `calibration()` for its rows. A scheme
    with an accuracy budget (`max_drop` option) left null runs with `max_drop` (the report's
    max_accuracy_drop; its default when not given); the metadata keeps the options as written and records
    the budget used as `max_drop_used`.
    """
    scheme, options = resolve(variant, raw)
    written = options
    if getattr(options, "max_drop", 0) is None and getattr(options, "budgeted", lambda: True)():
        from ..config import ReportParams

        used = ReportParams().max_accuracy_drop if max_drop is None else max_drop
        options = dataclasses.replace(options, max_drop=used)
    src_dir = Path(src_dir)
    if not (src_dir / "config.json").is_file():
        raise PtqflowError(f"{src_dir}: no fine-tuned model (run the finetune stage)")
    reason = unavailable(variant, raw, device or runtime_device())
    calibrates = scheme.calibrates(options) if callable(scheme.calibrates) else scheme.calibrates
    if calibrates and calibration is None and not reason:
        raise PtqflowError(f"variants.{variant}: scheme {scheme.name} calibrates on validation rows; give it the prepared data")
    with atomic_dir(out_dir) as tmp:
        try:
            if reason:
                info = {"skipped": reason}
            elif calibrates:
                info = scheme.quantize(src_dir, tmp, options, calibration())
            else:
                info = scheme.quantize(src_dir, tmp, options)
        except VariantSkipped as exc:  # e.g. an exporter that cannot take this architecture: said, nothing half-written
            for leftover in tmp.iterdir():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            info = {"skipped": str(exc)}
        meta = {"variant": variant, "scheme": scheme.name, "options": to_dict(written), **info}
        if options is not written:
            meta["max_drop_used"] = options.max_drop
        write_json(tmp / META_FILE, meta)
    return meta


def summary_line(stage: str, meta: dict) -> str:
    """The quantize stage's one console line: what the artifact computes in and how much was quantized (the
    whole metadata is in the artifact's ptqflow.json), or why the variant was skipped."""
    if meta.get("skipped"):
        return f"{stage}: skipped on this machine: {meta['skipped']}"
    counted = [f"{meta[k]} {what}" for k, what in (("quantized_modules", "projections"), ("quantized_embeddings", "embedding tables"))
               if meta.get(k)]
    return f"{stage}: {meta.get('runtime_dtype') or meta['scheme']}" + (f"; quantized: {', '.join(counted)}" if counted else "")


def load_variant(variant: str, raw: Any, artifact_dir: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Load variant `variant` from its artifact, after checking the artifact was made by the same scheme and options."""
    scheme, options = resolve(variant, raw)
    artifact_dir = Path(artifact_dir)
    if not (artifact_dir / META_FILE).is_file():
        raise PtqflowError(f"{artifact_dir}: no quantized artifact (run: dvc repro quantize@{variant})")
    meta = read_json(artifact_dir / META_FILE)
    expected = {"scheme": scheme.name, "options": to_dict(options)}
    found = {"scheme": meta.get("scheme"), "options": meta.get("options")}
    if found != expected:
        raise PtqflowError(f"{artifact_dir}: artifact was made as {found}, but params.yaml says {expected} (re-run quantize@{variant})")
    reason = meta.get("skipped") or unavailable(variant, raw, device)
    if reason:
        raise VariantSkipped(reason)
    model = scheme.load(artifact_dir, options, device)
    model.eval()
    return compile_model(model, run_options(variant, raw).compile), meta
