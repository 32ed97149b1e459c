"""OpenVINO: convert a fine-tuned classifier to an OpenVINO model (IR: `model.xml` + `model.bin`), check parity
with PyTorch, and run it behind the same call as every PyTorch variant.

Conversion: `openvino.convert_model` traces the same logits-only wrapper as the ONNX export
(`logits = f(input_ids, attention_mask[, token_type_ids])`, int64 inputs, batch and sequence dynamic). The IR
is saved without OpenVINO's default float16 weight compression, so float weights stay float32.

Run: `core.compile_model(model, "CPU", config)` with `INFERENCE_PRECISION_HINT` f32 or bf16 (on CPUs with bf16
OpenVINO's default is bf16: the hint is always given, so f32 really is float32), `INFERENCE_NUM_THREADS` = the
stage's torch thread count, one stream and the LATENCY hint (one request at a time, as every variant is timed).

Parity at conversion: on the ONNX export's seeded rows (3 x 24, every other row half padded),
d = max_{i,c} |logits_ov[i, c] - logits_torch[i, c]| with the f32 hint; above `parity_tolerance` conversion stops.

What ran in int8 (`int8_layers`): in the quantized model, a projection's MatMul whose activation comes out of a
FakeQuantize and whose weight out of an int8 constant; the compiled model's runtime graph (each executed layer's
type and precision) says how many FullyConnected layers the CPU plugin runs in u8 / i8. The plugin decides per CPU
(it may keep some products in float where the CPU has no VNNI): the two counts are recorded, and a difference is
the caller's to report.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import PtqflowError, VariantSkipped
from ..structure import uses_token_types
from .onnx_export import (EXAMPLE_SHAPE, PARITY_ROWS_SEED, PARITY_SHAPE, _LogitsOnly, input_names, load_for_export, numpy_feeds,
                          quiet, sample_inputs)

XML_FILE, BIN_FILE = "model.xml", "model.bin"
PRECISIONS = {"f32": "f32", "bf16": "bf16"}
INT8 = ("u8", "i8")
_MODULE = re.compile(r"__module\.model\.([^/]+)/")  # the wrapper holds the classifier as `model`


@contextlib.contextmanager
def quiet_nncf():
    """NNCF logs every step of its algorithms at INFO; keep the stage's console to its own lines and NNCF's
    progress bars (warnings and errors still show)."""
    import nncf

    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        with quiet():
            yield
    finally:
        nncf.set_log_level(level or logging.INFO)


def version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def missing(device: torch.device) -> str | None:
    """Why OpenVINO cannot run this variant on `device`, or None (ptqflow runs OpenVINO on its CPU plugin)."""
    if device.type != "cpu":
        return (f"OpenVINO variants run on OpenVINO's CPU plugin; this run is on {device.type} (set eval.device and "
                "benchmark.device to cpu to measure them)")
    return None


def convert(src_dir: Path, attention: str):
    """(openvino.Model, the PyTorch model it was traced from) for the fine-tuned model in `src_dir`."""
    import openvino as ov

    model = load_for_export(src_dir, attention)
    names = input_names(model.config)
    example = sample_inputs(model.config, EXAMPLE_SHAPE, seed=1)
    wrapper = _LogitsOnly(model, uses_token_types(model.config)).eval()
    with quiet(), torch.no_grad():
        try:
            converted = ov.convert_model(wrapper, example_input={n: example[n] for n in names},
                                         input=[(n, [-1, -1], ov.Type.i64) for n in names])
        except Exception as exc:  # noqa: BLE001 - the frontend raises many types; one line says which model and why
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise VariantSkipped(f"OpenVINO conversion of {model.config.model_type} failed: {first}") from None
    converted.outputs[0].get_tensor().set_names({"logits"})
    return converted, model


def save(model, out_dir: Path) -> None:
    """Write the IR; float weights are kept as they are (no float16 compression)."""
    import openvino as ov

    ov.save_model(model, str(out_dir / XML_FILE), compress_to_fp16=False)


def compile_model(model, precision: str, threads: int):
    """Compile for the CPU plugin with an explicit precision hint, thread count, one stream and the latency hint."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "INFERENCE_NUM_THREADS": int(threads),
              "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    return ov.Core().compile_model(model, "CPU", config)


def parity_check(torch_model: torch.nn.Module, ov_model, tolerance: float) -> float:
    """Max |logits| difference of OpenVINO (CPU, f32 hint) and PyTorch on the seeded rows; PtqflowError above."""
    feeds = sample_inputs(torch_model.config, PARITY_SHAPE, PARITY_ROWS_SEED)
    names = input_names(torch_model.config)
    with torch.no_grad():
        ref = _LogitsOnly(torch_model, uses_token_types(torch_model.config))(*(feeds[n] for n in names)).numpy()
    got = compile_model(ov_model, "f32", torch.get_num_threads())({n: feeds[n].numpy() for n in names})[0]
    diff = float(np.abs(got - ref).max())
    if not diff <= tolerance:
        raise PtqflowError(f"OpenVINO logits differ from PyTorch by {diff:.3g} > parity_tolerance {tolerance:g}; the "
                           "conversion is not faithful (try attention: eager)")
    return diff


def module_of(layer_name: str) -> str | None:
    """The PyTorch module a converted layer came from ('bert.encoder.layer.0.attention.self.query'), or None."""
    found = _MODULE.search(layer_name)
    return found.group(1) if found else None


def int8_layers(model, compiled) -> dict:
    """What ran in int8, from the model and its compiled form: {"layers": {"<layer type> <precision>": n} of the
    compiled model, "int8_modules": [...], "float_modules": [...], "compiled_int8": n}. A PyTorch module's matrix
    product is int8 in the model when its activation input comes out of a FakeQuantize and its weight out of an
    int8 constant (through Convert / Subtract / Multiply / Reshape / Transpose); `compiled_int8` counts the
    FullyConnected layers the compiled model runs in u8 / i8 (the plugin renames layers, so it is a count)."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        counts[f"{kind} {info['runtimePrecision'].astype(str) if 'runtimePrecision' in info else 'unrecorded'}"] += 1
    int8, floating = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or not _has_constant_weight(op):
            continue
        module = module_of(op.get_friendly_name())
        if module:
            (int8 if _fed_by(op, 0, ("FakeQuantize",)) and _int8_weight(op) else floating).append(module)
    ran = sum(n for k, n in counts.items() if k.split()[0] == "FullyConnected" and k.split()[1] in INT8)
    return {"layers": dict(sorted(counts.items())), "int8_modules": int8, "float_modules": floating, "compiled_int8": ran}


_PASS = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze")


def _producers(op, index: int, depth: int = 6):
    """The ops feeding input `index` of `op`, walking back through converts, scales and reshapes."""
    node = op.input(index).get_source_output().get_node()
    seen = [node]
    while depth and node.get_type_name() in _PASS:
        node = node.input(0).get_source_output().get_node()
        seen.append(node)
        depth -= 1
    return seen


def _fed_by(op, index: int, kinds: tuple[str, ...]) -> bool:
    return any(n.get_type_name() in kinds for n in _producers(op, index))


def _has_constant_weight(op) -> bool:
    return _producers(op, 1)[-1].get_type_name() in ("Constant", "FakeQuantize")


def _int8_weight(op) -> bool:
    last = _producers(op, 1)[-1]
    return last.get_type_name() == "Constant" and last.get_element_type().get_type_name() in ("i8", "u8")


class OvClassifier(torch.nn.Module):
    """An OpenVINO compiled model with a sequence classifier's forward. It holds no torch parameters; the bytes
    of the IR's weights are reported by `extra_memory_bytes()` (sizes.memory_footprint reads it)."""

    def __init__(self, artifact_dir: Path, config, precision: str):
        super().__init__()
        import openvino as ov

        xml = artifact_dir / XML_FILE
        if not xml.is_file():
            raise PtqflowError(f"{artifact_dir}: no {XML_FILE} (re-run its quantize stage)")
        self.config = config
        threads = torch.get_num_threads()
        self.ov_model = ov.Core().read_model(str(xml))
        self.compiled = compile_model(self.ov_model, precision, threads)
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]
        self.request = self.compiled.create_infer_request()
        self._weight_bytes = (artifact_dir / BIN_FILE).stat().st_size
        self.ptqflow_runtime = {"runtime": f"openvino {version()}", "device": "CPU", "inference_precision": precision,
                                "threads": threads, "streams": 1, "performance_hint": "LATENCY"}

    def extra_memory_bytes(self) -> int:
        return self._weight_bytes

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: object):
        from transformers.modeling_outputs import SequenceClassifierOutput

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        logits = self.request.infer(numpy_feeds(batch, self.inputs))[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(np.array(logits, copy=True)))
