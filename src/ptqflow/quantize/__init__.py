"""Quantization variants: the registry and its schemes (one module each)."""

from . import ao, bnb, cast, fp32, int8_dynamic, int8_scratch
from .registry import SCHEMES, Scheme, VariantSkipped, load_variant, quantize_variant, register, resolve, unavailable

for _scheme in (fp32.SCHEME, cast.SCHEME, int8_scratch.SCHEME, int8_dynamic.SCHEME, bnb.INT8, bnb.NF4, ao.SCHEME):
    register(_scheme)

__all__ = ["SCHEMES", "Scheme", "VariantSkipped", "load_variant", "quantize_variant", "register", "resolve", "unavailable"]
