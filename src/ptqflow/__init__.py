"""ptqflow: fine-tune, post-training quantize and measure a text classifier."""

__version__ = "0.1.0"
