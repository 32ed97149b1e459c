"""The variant registry: a variant in params.yaml names a scheme here, plus that scheme's options.

A scheme is a small options dataclass (validated like every params section) and two functions:
`quantize(src_dir, out_dir, options) -> info` writes the artifact from the fine-tuned model, and
`load(artifact_dir, options, device) -> model` loads it for evaluation (never re-quantizing).
Adding a scheme is one module with those functions and one line in `quantize/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import build, to_dict
from ..errors import PtqflowError
from ..io import atomic_dir, read_json, write_json

META_FILE = "ptqflow.json"


@dataclass(frozen=True)
class Scheme:
    name: str
    options: type  # dataclass of the scheme's options
    quantize: Callable[[Path, Path, Any], dict]
    load: Callable[[Path, Any, torch.device], torch.nn.Module]
    description: str


SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    if scheme.name in SCHEMES:
        raise ValueError(f"scheme {scheme.name!r} registered twice")
    SCHEMES[scheme.name] = scheme
    return scheme


def resolve(variant: str, raw: Any) -> tuple[Scheme, Any]:
    """The scheme and validated options of variant `variant` (its mapping under `variants:`)."""
    where = f"variants.{variant}"
    if not isinstance(raw, dict) or "scheme" not in raw:
        raise PtqflowError(f"params.yaml: {where} needs a 'scheme' key (one of {', '.join(SCHEMES)})")
    name = raw["scheme"]
    if name not in SCHEMES:
        raise PtqflowError(f"params.yaml: {where}.scheme {name!r} is not a registered scheme (known: {', '.join(SCHEMES)})")
    scheme = SCHEMES[name]
    options = build(scheme.options, {k: v for k, v in raw.items() if k != "scheme"}, where)
    return scheme, options


def quantize_variant(variant: str, raw: Any, src_dir: str | Path, out_dir: str | Path) -> dict:
    """Write variant `variant`'s artifact to `out_dir` (atomically) with its metadata file; returns the metadata."""
    scheme, options = resolve(variant, raw)
    src_dir = Path(src_dir)
    if not (src_dir / "config.json").is_file():
        raise PtqflowError(f"{src_dir}: no fine-tuned model (run the finetune stage)")
    with atomic_dir(out_dir) as tmp:
        info = scheme.quantize(src_dir, tmp, options)
        meta = {"variant": variant, "scheme": scheme.name, "options": to_dict(options), **info}
        write_json(tmp / META_FILE, meta)
    return meta


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
    model = scheme.load(artifact_dir, options, device)
    model.eval()
    return model, meta
