"""`ov_weights`: OpenVINO weight compression through NNCF (`nncf.compress_weights` on the converted model): the
projections' weights in 4 (or 3, 2) bits per value, group-wise, optionally calibrated on validation rows by AWQ
(activation-aware per-channel scales), scale estimation (NNCF's per-group scale refinement against the layer's
output on the calibration rows) and GPTQ; activations stay float. OpenVINO's CPU plugin decompresses the low-bit
weights inside its matrix product (a memory-bandwidth win, most visible at batch 1), the layer norms, attention
and the head run in `precision`.

Per group of G = `group_size` input columns of a weight row (NNCF's formulas): symmetric int4
w_q = clamp(round(w / s), -8, 7), s = max |w| / 8 (int4_sym; int3 / int2 likewise with 4 / 2), asymmetric int4
w_q = clamp(round(w / s) + z, 0, 15), s = (max - min) / 15. NNCF keeps the embedding tables and the last
projection in `backup_mode` (int8 asymmetric per channel) unless `all_layers: true`; the classification head is
kept float here (structure.py: the head is never quantized). What ended in which format is read from the
written model (the element type of each weight constant) and recorded per layer.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import structure
from ..calibration import Calibration
from ..config import check
from ..runtimes import openvino as ovrt
from ..runtimes.onnx_export import numpy_feeds
from .ov import OvOptions, _convert, cpu_only, load
from .registry import Scheme


@dataclass
class OvWeightsOptions(OvOptions):
    mode: Literal["int4_sym", "int4_asym", "int3_sym", "int2_sym", "int8_asym", "nf4"] = "int4_asym"
    group_size: int = 128  # input columns per scale (-1: one scale per output channel)
    ratio: float = 1.0  # share of the eligible layers in `mode`; the rest in backup_mode (NNCF ranks them by sensitivity)
    all_layers: bool = False  # also the embeddings and the last projection in `mode` (NNCF keeps them in backup_mode)
    backup_mode: Literal["int8_asym", "int8_sym", "none"] = "int8_asym"  # what NNCF uses for the layers not in `mode`
    # a projection whose input width group_size does not divide: adjust = the largest divisor NNCF finds (>= 16),
    # ignore = that projection in backup_mode, error = stop (both recorded per layer in weight_formats)
    group_size_fallback: Literal["adjust", "ignore", "error"] = "adjust"
    awq: bool = False  # data-aware: activation-aware per-channel scales (needs calibration rows)
    scale_estimation: bool = False  # data-aware: NNCF's scale estimation
    gptq: bool = False  # data-aware: GPTQ error compensation
    calibration_rows: int = 128  # validation rows the data-aware methods see
    calibration_batch_size: int = 16
    precision: Literal["f32", "bf16"] = "f32"  # what runs outside the decompressed products

    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation or self.gptq or self.ratio < 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.group_size == -1 or self.group_size >= 8, "group_size", "-1 or an integer >= 8", self.group_size)
        check(0.0 < self.ratio <= 1.0, "ratio", "a fraction in (0, 1]", self.ratio)
        check(self.calibration_rows >= 1, "calibration_rows", "a positive integer", self.calibration_rows)
        check(self.calibration_batch_size >= 1, "calibration_batch_size", "a positive integer", self.calibration_batch_size)
        check(not (self.awq and self.mode.startswith("int8")), "awq", "false with an int8 mode (NNCF's AWQ is for 4 bits and below)",
              self.awq)


LOW = {"u4", "i4", "u3", "i3", "u2", "i2", "u1", "nf4", "f4e2m1"}


FLOAT = {"f32", "f16", "bf16"}
FORMAT_NAMES = {"f32": "f32 (kept in float)", "f16": "f16 (kept in float)", "bf16": "bf16 (kept in float)"}


def weight_formats(model) -> tuple[dict[str, str], Counter]:
    """PyTorch module -> the element type of its weight constant in the written model (u4, i4, u8, f32, ...), for
    every MatMul (projections, head) and Gather (embedding tables) whose weight is a constant; and the element
    types of the MatMuls whose layer name names no module (a transformation renamed them), counted."""
    named: dict[str, str] = {}
    unnamed: Counter = Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather"):
            continue
        index = 1 if kind == "MatMul" else 0
        node = ovrt._producers(op, index, depth=10)[-1]
        if node.get_type_name() != "Constant":
            continue
        module = ovrt.module_of(op.get_friendly_name())
        if module:
            named[module] = node.get_element_type().get_type_name()
        elif kind == "MatMul":
            unnamed[node.get_element_type().get_type_name()] += 1
    return named, unnamed


def projection_formats(projections: tuple[str, ...], named: dict[str, str], unnamed: Counter) -> tuple[dict[str, str], Counter]:
    """({projection: its weight's element type}, {element type: projections}) for every projection. One whose
    MatMul carries no module name is read from the unnamed MatMuls' element types: when they all have one type,
    that is its type; otherwise "unnamed: u4 x3 / f32 x1" (the counts still say what the runtime did with them)."""
    found = {p: named[p] for p in projections if p in named}
    missing = [p for p in projections if p not in named]
    counted = Counter(found.values())
    if missing:
        pool = +unnamed
        if len(pool) == 1:
            (only,) = pool
            found.update({p: only for p in missing})
            counted[only] += len(missing)
        else:
            label = "unnamed: " + " / ".join(f"{t} x{n}" for t, n in pool.most_common()) if pool else "no constant weight in the graph"
            found.update({p: label for p in missing})
            if sum(pool.values()) == len(missing):
                counted.update(pool)
            else:
                counted[label] += len(missing)
    return {p: found[p] for p in projections}, counted


def quantize(src_dir: Path, out_dir: Path, options: OvWeightsOptions, calibration: Calibration | None = None) -> dict:
    import nncf

    info, converted, torch_model = _convert(src_dir, out_dir, options)
    found = structure.of(torch_model)
    ignored = found.head
    kwargs = dict(mode=nncf.CompressWeightsMode(options.mode), group_size=options.group_size, ratio=options.ratio,
                  all_layers=options.all_layers, backup_mode=nncf.BackupMode(options.backup_mode),
                  ignored_scope=nncf.IgnoredScope(patterns=[rf".*__module\.model\.{re.escape(n)}/.*" for n in ignored], validate=False))
    if options.mode.startswith("int8"):
        kwargs.pop("group_size"), kwargs.pop("ratio"), kwargs.pop("backup_mode"), kwargs.pop("all_layers")
    else:
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        kwargs["advanced_parameters"] = AdvancedCompressionParameters(
            group_size_fallback_mode=GroupSizeFallbackMode(options.group_size_fallback))
    rows = 0
    if options.data_aware():
        names = info["openvino"]["inputs"]
        feeds = [numpy_feeds(b, names) for b in calibration.batches(options.calibration_rows, options.calibration_batch_size)]
        rows = sum(len(f[names[0]]) for f in feeds)
        kwargs.update(dataset=nncf.Dataset(feeds), subset_size=len(feeds),  # NNCF counts dataset items: batches awq=options.awq, scale_estimation=options.scale_estimation,
                      gptq=options.gptq)
    started = time.perf_counter()
    with ovrt.quiet_nncf():
        compressed = nncf.compress_weights(converted, **kwargs)
    seconds = time.perf_counter() - started
    ovrt.save(compressed, out_dir)
    formats, unnamed = weight_formats(compressed)
    projections, counted = projection_formats(found.projections, formats, unnamed)
    tables = {e: formats.get(e, "no constant weight in the graph") for e in found.embeddings}
    low = sum(n for t, n in counted.items() if t in LOW)
    structure.expect(len(projections), len(found.projections), "projections found in the OpenVINO model", "ov_weights")
    methods = [m for m in ("awq", "scale_estimation", "gptq") if getattr(options, m)] or ["round-to-nearest"]
    group = "per channel" if options.group_size == -1 else f"groups of {options.group_size}"
    return {**info,
            "runtime_dtype": f"{options.mode} weights ({group}, {' + '.join(methods)}) in {low} of {len(projections)} projections, "
                             f"{', '.join(f'{FORMAT_NAMES.get(t, t)} in {n}' for t, n in counted.items() if t not in LOW) or 'none in other formats'}, "
                             f"decompressed in the product; activations {options.precision} (OpenVINO CPU)",
            "quantized_modules": low, "weight_formats": {"projections": projections, "embeddings": tables,
                                                         "head": {h: formats.get(h, "no constant weight in the graph")
                                                                  for h in found.head}},
            "formats": {t: {"projections": n} for t, n in counted.items()},
            "methods": methods, "compress_seconds": round(seconds, 1),
            "calibration": {"rows": rows, "source": calibration.source} if rows else None}


SCHEME = Scheme("ov_weights", OvWeightsOptions, quantize, load,
                "OpenVINO + NNCF weight compression: 4 / 3 / 2-bit group-wise weights (AWQ, scale estimation, GPTQ), "
                "float activations", available=cpu_only, calibrates=lambda options: options.data_aware(), compiles=False,
                loader="openvino")
