"""Quantization variants: the registry and its schemes (one module each)."""

from . import ao, bnb, cast, fp8, fp32, int8_dynamic, int8_scratch, int8_static, lowbit, ort, ov, ov_weights
from .registry import SCHEMES, Calibration, Scheme, VariantSkipped, load_variant, quantize_variant, register, resolve, unavailable

for _scheme in (fp32.SCHEME, cast.SCHEME, int8_scratch.SCHEME, int8_dynamic.SCHEME, bnb.INT8, bnb.NF4, ao.SCHEME,
                ort.FP32, ort.INT8_DYNAMIC, ort.INT8_STATIC, ort.INT4, ort.FP16, fp8.SCHEME, int8_static.SCHEME, ov.FP32, ov.BF16,
                ov.INT8, ov.INT8_ACCURACY_CONTROL, lowbit.SCHEME,
                ov_weights.SCHEME):
    register(_scheme)

__all__ = ["SCHEMES", "Calibration", "Scheme", "VariantSkipped", "load_variant", "quantize_variant", "register", "resolve", "unavailable"]
