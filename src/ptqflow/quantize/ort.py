"""ONNX Runtime variants: the fine-tuned model exported to ONNX (onnx_export.py), then

- `ort_fp32`: not quantized (graph optimizations only);
- `ort_int8_dynamic`: `onnxruntime.quantization.quantize_dynamic`: int8 weights (per output channel by default),
  activations quantized at run time per tensor, a_scale = (max(x) - min(x)) / 255 over the live batch;
- `ort_int8_static`: `quantize_static`: activation scales fixed from `calibration_rows` rows of the validation
  split (never the test split), by minmax (s = (max - min) / 255 over all calibration batches), entropy
  (the clipping range minimising KL divergence) or percentile (the range holding `percentile` % of values);
- `ort_fp16`: the graph converted to float16, on ONNX Runtime's CUDA execution provider.

Only weight matrix products are quantized by default (MatMul / Gemm with a constant weight): layer norms,
softmax, GELU and residual adds stay float. `activation_matmuls` also quantizes the attention products
(Q K^T and softmax x V, the softmax's neighbours); `output_quantization` re-quantizes the products' outputs
(the inputs of the residual adds and GELU). The number of quantized products is counted in the graph and
must equal the model's projections + head (structure.py).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..errors import PtqflowError
from ..config import check
from ..runtimes.onnx_export import DATA_FILE, GRAPH_FILE, ExportOptions, export_onnx, numpy_feeds, quiet
from ..structure import expect
from ..calibration import Calibration
from .registry import Scheme

QUANTIZABLE = ("MatMul", "Gemm")
INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearMatMul", "QAttention")


@dataclass
class OrtFp32Options(ExportOptions):
    pass


@dataclass
class OrtDynamicOptions(ExportOptions):
    per_channel: bool = True
    # 7-bit weights, so that u8 x s8 pair sums cannot saturate on CPUs without VNNI (machine.exact_int8_products);
    # auto: true exactly there (decided on the CPU that quantizes, recorded)
    reduce_range: bool | Literal["auto"] = "auto"
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm"])

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_op_types(self.op_types)


@dataclass
class OrtStaticOptions(ExportOptions):
    calibration_rows: int = 256  # validation rows the activation ranges are fitted on
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.999  # method: percentile
    format: Literal["QDQ", "QOperator"] = "QDQ"
    per_channel: bool = True
    reduce_range: bool | Literal["auto"] = "auto"  # as for ort_int8_dynamic
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm"])
    activation_matmuls: bool = False  # also quantize Q K^T and softmax x V (the softmax's neighbours)
    output_quantization: bool = False  # re-quantize the products' outputs (inputs of residual adds, GELU)
    calibration_batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_op_types(self.op_types)
        check(self.calibration_rows >= 1, "calibration_rows", "a positive integer", self.calibration_rows)
        check(self.calibration_batch_size >= 1, "calibration_batch_size", "a positive integer", self.calibration_batch_size)
        check(50.0 < self.percentile < 100.0, "percentile", "a number in (50, 100)", self.percentile)


@dataclass
class OrtNBitsOptions(ExportOptions):
    # round-to-nearest (ORT's own MatMulNBits quantizer). Its GPTQ (a vendored Neural Compressor) stops on the exported
    # encoder graphs ("cannot reshape array of size 576 into shape (384,newaxis)", ORT 1.31): GPTQ is lowbit's / NNCF's
    block_size: int = 128  # input values per scale (a power of two >= 16)
    symmetric: bool = False  # false: a zero point per block
    accuracy_level: int | None = 4  # MatMulNBits compute: 4 = int8 activations (fast on CPU), 1 = float32, null: ORT's default

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0, "block_size", "a power of two >= 16",
              self.block_size)
        check(self.accuracy_level is None or self.accuracy_level in (0, 1, 2, 3, 4), "accuracy_level", "0..4 or null",
              self.accuracy_level)


@dataclass
class OrtFp16Options(ExportOptions):
    pass


def _check_op_types(op_types: list[str]) -> None:
    bad = [o for o in op_types if o not in QUANTIZABLE]
    check(bool(op_types) and not bad, "op_types", f"a non-empty list of {', '.join(QUANTIZABLE)}", op_types)


# ------------------------------------------------------------------------------------------- schemes
def quantize_fp32(src_dir: Path, out_dir: Path, options: OrtFp32Options) -> dict:
    info = export_onnx(src_dir, out_dir, options)
    shutil.copy(src_dir / "config.json", out_dir / "config.json")  # labels, pad token: the adapter reads them
    return {"runtime_dtype": "float32", "quantized_tensors": 0, **info}


def reduce_range(options: OrtDynamicOptions | OrtStaticOptions) -> bool:
    """The reduce_range the quantizer gets: as written, or for `auto` whether this CPU's u8 x s8 products can
    saturate (no VNNI / AMX: machine.exact_int8_products)."""
    from ..machine import exact_int8_products

    return (not exact_int8_products()) if options.reduce_range == "auto" else bool(options.reduce_range)


def quantize_dynamic(src_dir: Path, out_dir: Path, options: OrtDynamicOptions) -> dict:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="ptqflow-onnx-") as tmp:
        info = export_onnx(src_dir, Path(tmp), options)
        with quiet():
            ort_quantize_dynamic(Path(tmp) / GRAPH_FILE, out_dir / GRAPH_FILE, per_channel=options.per_channel,
                                 reduce_range=reduce_range(options), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=list(options.op_types), use_external_data_format=True,
                                 extra_options=_extra({"MatMulConstBOnly": True}))
    shutil.copy(src_dir / "config.json", out_dir / "config.json")  # labels, pad token: the adapter reads them
    return {**info, **_counted(out_dir, info, options.op_types, "dynamic"),
            "reduce_range": reduce_range(options),
            "runtime_dtype": "int8 weights x int8 activations (scales per batch at run time) -> int32; float32 elsewhere"
                             + ("; 7-bit weights (reduce_range: u8 x s8 sums cannot saturate on this CPU)" if reduce_range(options) else "")}


def quantize_static(src_dir: Path, out_dir: Path, options: OrtStaticOptions, calibration: Calibration) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="ptqflow-onnx-") as tmp:
        info = export_onnx(src_dir, Path(tmp), options)
        names = info["onnx"]["inputs"]
        batches = calibration.batches(options.calibration_rows, options.calibration_batch_size)
        feeds = [numpy_feeds(b, names) for b in batches]
        extra = {"MatMulConstBOnly": not options.activation_matmuls, "CalibPercentile": options.percentile,
                 "CalibTensorRangeSymmetric": False}
        # MatMulConstBOnly is not honoured by the QDQ quantizer (ORT 1.31): name the activation products instead
        excluded = [] if options.activation_matmuls else activation_products(Path(tmp) / GRAPH_FILE)
        if not options.output_quantization:
            extra["OpTypesToExcludeOutputQuantization"] = list(options.op_types)
        with quiet():
            ort_quantize_static(Path(tmp) / GRAPH_FILE, out_dir / GRAPH_FILE, _Reader(feeds),
                                quant_format=QuantFormat.QDQ if options.format == "QDQ" else QuantFormat.QOperator,
                                op_types_to_quantize=list(options.op_types), per_channel=options.per_channel,
                                nodes_to_exclude=excluded, reduce_range=reduce_range(options), activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=methods[options.method],
                                use_external_data_format=True, extra_options=_extra(extra))
    shutil.copy(src_dir / "config.json", out_dir / "config.json")  # labels, pad token: the adapter reads them
    return {**info, **_counted(out_dir, info, options.op_types, options.format),
            "activation_products_kept_float": len(excluded),
            "calibration": {"rows": sum(len(f[names[0]]) for f in feeds), "source": calibration.source,
                            "method": options.method, **({"percentile": options.percentile} if options.method == "percentile" else {})},
            "runtime_dtype": "int8 weights x uint8 activations (calibrated scales) -> int32; float32 elsewhere"}


def quantize_nbits(src_dir: Path, out_dir: Path, options: OrtNBitsOptions) -> dict:
    """`ort_int4`: MatMulNBitsQuantizer on the exported graph: every weight MatMul but the head (the last one in
    the graph's topological order: a classifier's head is its last weight product) in 4 bits per value, a scale
    (and zero point) per `block_size` input values, by round-to-nearest."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    with tempfile.TemporaryDirectory(prefix="ptqflow-onnx-") as tmp:
        info = export_onnx(src_dir, Path(tmp), options)
        model = onnx.load(str(Path(tmp) / GRAPH_FILE))
        inits = {i.name for i in model.graph.initializer}
        weighted = [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits]
        head = weighted[-1:]
        if len(weighted) < 2:
            from ..errors import VariantSkipped

            raise VariantSkipped(f"ONNX Runtime's MatMulNBits takes MatMul weight products; this architecture's export has "
                                 f"{len(weighted)} (its projections are {', '.join(o for o, n in info['onnx']['weight_matmuls'].items() if n)} nodes)")
        algo = DefaultWeightOnlyQuantConfig(block_size=options.block_size, is_symmetric=options.symmetric,
                                            accuracy_level=options.accuracy_level)
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=options.block_size, is_symmetric=options.symmetric,
                                         accuracy_level=options.accuracy_level, nodes_to_exclude=head, algo_config=algo)
        with quiet():
            quantizer.process()
        onnx.save(quantizer.model.model, str(out_dir / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=DATA_FILE, size_threshold=1024)
    graph = onnx.load(str(out_dir / GRAPH_FILE), load_external_data=False).graph
    nbits = sum(1 for n in graph.node if n.op_type == "MatMulNBits")
    expect(nbits, len(weighted) - len(head), "MatMulNBits products in the ONNX graph (every weight MatMul but the head)",
           "ort_int4")
    shutil.copy(src_dir / "config.json", out_dir / "config.json")
    level = {None: "ORT's default", 0: "ORT's default", 1: "float32", 2: "float16", 3: "bfloat16", 4: "int8"}[options.accuracy_level]
    return {**info, "quantized_tensors": nbits, "quantized_modules": nbits, "head_kept_float": head,
            "onnx_operators_quantized": dict(Counter(n.op_type for n in graph.node).most_common()),
            "runtime_dtype": f"4-bit weights (round-to-nearest, blocks of {options.block_size}, "
                             f"{'symmetric' if options.symmetric else 'zero point per block'}) in {nbits} MatMulNBits products "
                             f"(of {sum(info['onnx']['weight_matmuls'].values())} weight products; Gemm and the head stay float), "
                             f"computed in {level} (accuracy_level {options.accuracy_level}); float32 elsewhere"}


def quantize_fp16(src_dir: Path, out_dir: Path, options: OrtFp16Options) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with tempfile.TemporaryDirectory(prefix="ptqflow-onnx-") as tmp:
        info = export_onnx(src_dir, Path(tmp), options)
        model = convert_float_to_float16(onnx.load(str(Path(tmp) / GRAPH_FILE)), keep_io_types=True)
        onnx.save(model, str(out_dir / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=DATA_FILE, size_threshold=1024)
    shutil.copy(src_dir / "config.json", out_dir / "config.json")  # labels, pad token: the adapter reads them
    return {**info, "runtime_dtype": "float16 (inputs and logits float32 / int64)"}


# --------------------------------------------------------------------------------------------- load
def load(artifact_dir: Path, options: ExportOptions, device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig

    from ..runtimes.ort_session import OrtClassifier

    graph = artifact_dir / GRAPH_FILE
    if not graph.is_file():
        raise PtqflowError(f"{artifact_dir}: no {GRAPH_FILE} (re-run its quantize stage)")
    return OrtClassifier(graph, AutoConfig.from_pretrained(str(artifact_dir)), device, options.graph_optimization)


def cpu_only(options: ExportOptions, device: torch.device) -> str | None:
    if device.type != "cpu":
        return (f"ONNX Runtime's int8 kernels (MatMulInteger / QLinear) run on its CPU execution provider; this run is on "
                f"{device.type} (set eval.device and benchmark.device to cpu to measure them)")
    return None


def any_provider(options: ExportOptions, device: torch.device) -> str | None:
    from ..runtimes.ort_session import missing_provider

    return missing_provider(device)


def cuda_only(options: ExportOptions, device: torch.device) -> str | None:
    from ..runtimes.ort_session import missing_provider

    if device.type != "cuda":
        return f"ort_fp16 runs on ONNX Runtime's CUDA execution provider; this run is on {device.type} (float16 on CPU is emulated)"
    return missing_provider(device)


# -------------------------------------------------------------------------------------------- helpers
def activation_products(graph_path: Path) -> list[str]:
    """Names of the MatMul nodes that multiply two activations (attention's Q K^T and softmax x V): no initializer
    among their inputs."""
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in inits for i in n.input)]


def _extra(options: dict) -> dict:
    import onnx

    return {"DefaultTensorType": onnx.TensorProto.FLOAT, **options}


def _counted(out_dir: Path, info: dict, op_types: list[str], how: str) -> dict:
    """Count the int8 matrix products in the written graph; they must be every weight product of `op_types`
    in the exported graph (there: the model's projections + head, unless fusions packed some into Attention)."""
    import onnx

    graph = onnx.load(str(out_dir / GRAPH_FILE), load_external_data=False).graph
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    if how == "QDQ":  # a float MatMul / Gemm whose weight comes out of a DequantizeLinear of an int8 initializer
        dq = {o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8 for o in n.output}
        quantized = sum(1 for n in graph.node if n.op_type in QUANTIZABLE and len(n.input) > 1 and n.input[1] in dq)
    else:  # QOperator: an integer kernel with an int8 weight initializer among its inputs
        quantized = sum(1 for n in graph.node if n.op_type in INT8_OPS and any(i in int8 for i in n.input))
    expected = sum(info["onnx"]["weight_matmuls"].get(o, 0) for o in op_types)
    expect(quantized, expected, "int8 weight matrix products in the ONNX graph", f"({', '.join(op_types)}; {how})")
    return {"quantized_tensors": quantized,
            "onnx_operators_quantized": dict(Counter(n.op_type for n in graph.node).most_common())}


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __iter__(self):  # ORT's GPTQ iterates the reader itself
        return iter(self._feeds)


FP32 = Scheme("ort_fp32", OrtFp32Options, quantize_fp32, load, "ONNX Runtime, float32 (exported, graph-optimized)",
              available=any_provider, compiles=False,
                loader="onnxruntime")
INT8_DYNAMIC = Scheme("ort_int8_dynamic", OrtDynamicOptions, quantize_dynamic, load,
                      "ONNX Runtime quantize_dynamic: int8 weights, activations quantized per batch", available=cpu_only, compiles=False,
                loader="onnxruntime")
INT8_STATIC = Scheme("ort_int8_static", OrtStaticOptions, quantize_static, load,
                     "ONNX Runtime quantize_static: int8 weights, activation scales calibrated on validation rows",
                     available=cpu_only, calibrates=True, compiles=False,
                loader="onnxruntime")
INT4 = Scheme("ort_int4", OrtNBitsOptions, quantize_nbits, load,
              "ONNX Runtime MatMulNBits: 4-bit block-wise weights by round-to-nearest", available=cpu_only,
              compiles=False, loader="onnxruntime")
FP16 = Scheme("ort_fp16", OrtFp16Options, quantize_fp16, load, "ONNX Runtime float16 on the CUDA execution provider",
              available=cuda_only, compiles=False,
                loader="onnxruntime")
