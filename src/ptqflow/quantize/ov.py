"""OpenVINO variants: the fine-tuned model converted to OpenVINO (runtimes/openvino.py), then

- `ov_fp32`: not quantized, run with the f32 precision hint (really float32, also on CPUs with bf16);
- `ov_bf16`: the same graph with the bf16 hint (OpenVINO's own default where the CPU has native bf16);
  skipped where the CPU has no native bf16 arithmetic (machine.native_half);
- `ov_int8`: `nncf.quantize` (`ModelType.TRANSFORMER`): int8 weights per output channel and int8 activations
  with per-tensor scales fitted on `calibration_rows` rows of the **validation** split, SmoothQuant (alpha
  `smooth_quant_alpha`: x' = x / s, W' = W diag(s), s[k] = max|x_k|^a / max_j |W[j, k]|^(1-a), as int8_static's
  formula (0)) and fast bias correction; layer norms, softmax, GELU and residual sums stay float;
- `ov_int8_accuracy_control`: `nncf.quantize_with_accuracy_control`: the same quantization, then NNCF ranks the
  quantized operations by their contribution to the validation accuracy drop and reverts the worst to float until
  drop = accuracy(float) - accuracy(quantized) <= `max_drop` on the first `validation_rows` validation rows
  (`max_drop` null: report.max_accuracy_drop). Which projections it kept in float is recorded.

The classification head stays float in every scheme (structure.py: the head is never quantized), and
`ignored_scope` names more PyTorch modules to keep float (regular expressions on module names, e.g.
`bert\\.encoder\\.layer\\.5\\.output\\.dense`). What ran in int8 is read from the compiled model and counted
against the structure: every projection not ignored (and not reverted by accuracy control) must run in int8.
Fewer activation bits are not offered: NNCF 3.4 rejects `QuantizationParameters(num_bits=4)` for activations
against every hardware config (CPU, ANY: "incompatible with HW capabilities"); 4-bit activations are int8_static's.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import structure
from ..calibration import Calibration
from ..config import check
from ..errors import PtqflowError
from ..runtimes import openvino as ovrt
from ..runtimes.onnx_export import numpy_feeds
from .registry import Scheme


@dataclass
class OvOptions:
    """How the model is converted; every ov_* scheme's options start with these."""

    attention: Literal["auto", "sdpa", "eager"] = "auto"  # auto: SDPA where the architecture has it, else eager
    parity_tolerance: float = 1e-3  # max |logits difference| OpenVINO f32 vs PyTorch fp32 at conversion

    def __post_init__(self) -> None:
        check(0 < self.parity_tolerance < 1, "parity_tolerance", "a number in (0, 1)", self.parity_tolerance)


@dataclass
class OvInt8Options(OvOptions):
    precision: Literal["f32", "bf16"] = "f32"  # what runs outside the int8 products (layer norms, softmax, the head)
    calibration_rows: int = 256  # validation rows the activation ranges are fitted on
    calibration_batch_size: int = 16
    smooth_quant_alpha: float | None = 0.95  # NNCF's transformer default for MatMul inputs; null: no SmoothQuant
    preset: Literal["performance", "mixed"] = "performance"  # mixed: asymmetric activation ranges
    fast_bias_correction: bool = True
    ignored_scope: list[str] = field(default_factory=list)  # regexes on PyTorch module names kept float
    # NNCF's overflow fix: int8 weights halved into 7 bits so that u8 x s8 pair sums cannot saturate on CPUs without
    # VNNI. auto: enable there (machine.exact_int8_products), NNCF's default first_layer elsewhere (recorded)
    overflow_fix: Literal["auto", "enable", "first_layer", "disable"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.calibration_rows >= 1, "calibration_rows", "a positive integer", self.calibration_rows)
        check(self.calibration_batch_size >= 1, "calibration_batch_size", "a positive integer", self.calibration_batch_size)
        check(self.smooth_quant_alpha is None or 0.0 <= self.smooth_quant_alpha <= 1.0, "smooth_quant_alpha",
              "an alpha in [0, 1] or null", self.smooth_quant_alpha)
        for pattern in self.ignored_scope:
            try:
                re.compile(pattern)
            except (re.error, TypeError):
                check(False, "ignored_scope", "a list of regular expressions on module names", self.ignored_scope)


@dataclass
class OvAccuracyControlOptions(OvInt8Options):
    max_drop: float | None = None  # validation accuracy drop allowed (fraction); null: report.max_accuracy_drop
    validation_rows: int = 1000  # the first N validation rows the drop is judged on
    max_num_iterations: int = 100  # NNCF's cap on revert-and-validate rounds

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_drop is None or 0.0 <= self.max_drop < 1.0, "max_drop", "a fraction in [0, 1) or null", self.max_drop)
        check(self.validation_rows >= 1, "validation_rows", "a positive integer", self.validation_rows)
        check(self.max_num_iterations >= 1, "max_num_iterations", "a positive integer", self.max_num_iterations)


# ------------------------------------------------------------------------------------------- schemes
def quantize_fp32(src_dir: Path, out_dir: Path, options: OvOptions) -> dict:
    info, converted, _ = _convert(src_dir, out_dir, options)
    ovrt.save(converted, out_dir)
    return {**info, "runtime_dtype": "float32 (OpenVINO CPU, f32 hint)"}


def quantize_bf16(src_dir: Path, out_dir: Path, options: OvOptions) -> dict:
    info, converted, _ = _convert(src_dir, out_dir, options)
    ovrt.save(converted, out_dir)
    return {**info, "runtime_dtype": "bfloat16 compute, float32 weights and logits (OpenVINO CPU, bf16 hint)"}


def quantize_int8(src_dir: Path, out_dir: Path, options: OvInt8Options, calibration: Calibration) -> dict:
    return _quantize(src_dir, out_dir, options, calibration, accuracy_control=False)


def quantize_accuracy_control(src_dir: Path, out_dir: Path, options: OvAccuracyControlOptions, calibration: Calibration) -> dict:
    return _quantize(src_dir, out_dir, options, calibration, accuracy_control=True)


def _convert(src_dir: Path, out_dir: Path, options: OvOptions) -> tuple[dict, object, torch.nn.Module]:
    """(what was done, the converted openvino.Model, the PyTorch model it came from); parity checked, config copied."""
    from ..runtimes.onnx_export import attention_for

    attention = attention_for(src_dir, options.attention)
    converted, torch_model = ovrt.convert(src_dir, attention)
    parity = ovrt.parity_check(torch_model, converted, options.parity_tolerance)
    shutil.copy(src_dir / "config.json", out_dir / "config.json")  # labels, pad token: the adapter reads them
    info = {"openvino": {"version": ovrt.version(), "attention": attention, "inputs": [i.get_any_name() for i in converted.inputs]},
            "parity_max_abs_diff": parity, "n_parameters": torch_model.num_parameters()}
    return info, converted, torch_model


def _quantize(src_dir: Path, out_dir: Path, options: OvInt8Options, calibration: Calibration, accuracy_control: bool) -> dict:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    info, converted, torch_model = _convert(src_dir, out_dir, options)
    found = structure.of(torch_model)
    ignored = found.head + tuple(p for p in found.projections if any(re.fullmatch(r, p) for r in options.ignored_scope))
    names = info["openvino"]["inputs"]
    feeds = [numpy_feeds(b, names) for b in calibration.batches(options.calibration_rows, options.calibration_batch_size)]
    from nncf.quantization.advanced_parameters import OverflowFix

    from ..machine import exact_int8_products

    overflow = options.overflow_fix if options.overflow_fix != "auto" else ("first_layer" if exact_int8_products() else "enable")
    info["overflow_fix"] = overflow
    advanced = AdvancedQuantizationParameters(
        overflow_fix={"enable": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER, "disable": OverflowFix.DISABLE}[overflow],
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1 if options.smooth_quant_alpha is None else options.smooth_quant_alpha))
    common = dict(preset=nncf.QuantizationPreset.PERFORMANCE if options.preset == "performance" else nncf.QuantizationPreset.MIXED,
                  model_type=nncf.ModelType.TRANSFORMER, target_device=nncf.TargetDevice.CPU,
                  subset_size=len(feeds),  # NNCF counts dataset items: here batches of calibration_batch_size rows
                  fast_bias_correction=options.fast_bias_correction,
                  ignored_scope=nncf.IgnoredScope(patterns=[rf".*__module\.model\.{re.escape(n)}/.*" for n in ignored], validate=False))
    started = time.perf_counter()
    with ovrt.quiet_nncf():
        if accuracy_control:
            batches, labels = calibration.scoring_batches(options.validation_rows)
            items, at = [], 0
            for b in batches:
                n = len(b["input_ids"])
                items.append((numpy_feeds(b, names), labels[at : at + n].numpy()))
                at += n
            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            quantized = nncf.quantize_with_accuracy_control(
                converted, nncf.Dataset(feeds), nncf.Dataset(items), _validate_with_progress(), max_drop=options.max_drop,
                drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced,
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=options.max_num_iterations),
                **common)
        else:
            quantized = nncf.quantize(converted, nncf.Dataset(feeds), advanced_parameters=advanced, **common)
    seconds = time.perf_counter() - started
    ovrt.save(quantized, out_dir)
    ran = ovrt.int8_layers(quantized, ovrt.compile_model(quantized, options.precision, torch.get_num_threads()))
    int8 = [m for m in ran["int8_modules"] if m in found.projections]
    expected = [p for p in found.projections if p not in ignored]
    precision = ran_in_int8(expected, int8, ran["compiled_int8"], accuracy_control)
    from ..sensitivity import macs

    mac = macs(torch_model, list(found.projections))
    kept = [p for p in found.projections if p not in int8]
    info.update({
        "quantized_modules": len(int8), "kept_float": kept, "mac_share_8bit": round(sum(mac[n] for n in int8) / sum(mac.values()), 6),
        "compiled_layers": ran["layers"], "int8_precision": precision, "search_seconds" if accuracy_control else "quantize_seconds": round(seconds, 1),
        "calibration": {"rows": sum(len(f[names[0]]) for f in feeds), "source": calibration.source},
        "runtime_dtype": f"int8 weights x uint8 activations (calibrated scales) -> int32 in {ran['compiled_int8']} of "
                         f"{len(found.projections)} projections as compiled on this CPU; {options.precision} elsewhere (OpenVINO CPU)",
    })
    if accuracy_control:
        info["accuracy_control"] = {"max_drop": options.max_drop, "validation_rows": int(sum(len(i[1]) for i in items)),
                                    "reverted_to_float": [p for p in kept if p not in ignored]}
    return info


def ran_in_int8(asked: list[str], quantized: list[str], compiled_int8: int, accuracy_control: bool) -> dict:
    """What ran in int8 against what was asked: the projections asked for (`asked`: every body projection outside
    the ignored scope), those NNCF quantized in the graph, and the FullyConnected layers the CPU plugin runs in int8
    on this CPU (it may keep some in float, e.g. without VNNI). A difference is warned about and recorded (the
    report's precision list); only nothing in int8 stops the stage. Accuracy control reverts some on purpose."""
    from ..machine import cpu_info

    record = {"asked": len(asked), "quantized_in_graph": len(quantized), "compiled_int8": compiled_int8,
              "float_in_graph": [p for p in asked if p not in quantized], "cpu": cpu_info()}
    if asked and compiled_int8 == 0:
        raise PtqflowError(f"the compiled OpenVINO model runs no matrix product in int8 on this CPU ({cpu_info()['model']}); "
                           f"{len(asked)} were asked for")
    if not accuracy_control and (len(quantized) != len(asked) or compiled_int8 != len(quantized)):
        import warnings

        record["differs"] = True
        warnings.warn(f"OpenVINO on this CPU ({cpu_info()['model']}) runs {compiled_int8} of the {len(asked)} projections "
                      f"asked for in int8 ({len(quantized)} quantized in the graph); the rest in float (recorded in the report)",
                      stacklevel=2)
    return record


def _validate_with_progress():
    """_validate, saying each validation NNCF's accuracy control runs (its own INFO logs are kept quiet)."""
    from ..sensitivity import step

    calls = [0]

    def validate(compiled, items) -> float:
        calls[0] += 1
        started = time.perf_counter()
        accuracy = _validate(compiled, items)
        step("accuracy control", f"validation {calls[0]}: accuracy {accuracy:.4f} ({time.perf_counter() - started:.0f} s)")
        return accuracy

    return validate


def _validate(compiled, items) -> float:
    """Accuracy of a compiled model on (feeds, labels) items: NNCF's validation function."""
    right = total = 0
    for feeds, labels in items:
        predicted = np.asarray(compiled(feeds)[0]).argmax(-1)
        right += int((predicted == labels).sum())
        total += len(labels)
    return right / total


# --------------------------------------------------------------------------------------------- load
def load(artifact_dir: Path, options: OvOptions, device: torch.device, precision: str | None = None) -> torch.nn.Module:
    from transformers import AutoConfig

    return ovrt.OvClassifier(artifact_dir, AutoConfig.from_pretrained(str(artifact_dir)), precision or options.precision)


def cpu_only(options: OvOptions, device: torch.device) -> str | None:
    return ovrt.missing(device)


def bf16_available(options: OvOptions, device: torch.device) -> str | None:
    from ..machine import native_half

    if ovrt.missing(device):
        return ovrt.missing(device)
    if not native_half("bfloat16"):
        return ("bfloat16 is not native on this CPU (no avx512_bf16 / amx_bf16 in its flags): OpenVINO would run "
                "the bf16 hint in float32, so ov_bf16 would be ov_fp32 under another name")
    return None


def int8_available(options: OvInt8Options, device: torch.device) -> str | None:
    if options.precision == "bf16":
        return bf16_available(options, device)
    return cpu_only(options, device)


FP32 = Scheme("ov_fp32", OvOptions, quantize_fp32, partial(load, precision="f32"),
              "OpenVINO, float32 (converted with openvino.convert_model, f32 precision hint)",
              available=cpu_only, compiles=False, loader="openvino")
BF16 = Scheme("ov_bf16", OvOptions, quantize_bf16, partial(load, precision="bf16"),
              "OpenVINO, bf16 precision hint (native bf16 CPUs)", available=bf16_available, compiles=False, loader="openvino")
INT8 = Scheme("ov_int8", OvInt8Options, quantize_int8, load,
              "OpenVINO + NNCF post-training quantization: int8 weights and activations calibrated on validation rows",
              available=int8_available, calibrates=True, compiles=False, loader="openvino")
INT8_ACCURACY_CONTROL = Scheme("ov_int8_accuracy_control", OvAccuracyControlOptions, quantize_accuracy_control, load,
                               "OpenVINO + NNCF quantize_with_accuracy_control: int8, the worst operations reverted to "
                               "float until the validation drop <= max_drop", available=int8_available, calibrates=True,
                               compiles=False, loader="openvino")
