"""Quantization variants: the registry and its schemes (one module each)."""

from . import bnb, cast, fp32, int8_scratch
from .registry import SCHEMES, Scheme, load_variant, quantize_variant, register, resolve

for _scheme in (fp32.SCHEME, cast.SCHEME, int8_scratch.SCHEME, bnb.INT8, bnb.NF4):
    register(_scheme)

__all__ = ["SCHEMES", "Scheme", "load_variant", "quantize_variant", "register", "resolve"]
