"""What a stage shows on the console: its own progress bars and its one result line. This is the one place
where known, non-actionable messages of other libraries are dropped; every other warning still shows.

Dropped (each is a library telling about an optional part it can do without; none asks anything of a user):
- torchao, on import: "Failed to load .../torchao/_C_*.so": its optional CUDA / MX kernels, which a CPU build
  of torch cannot load. Its CPU paths do not use them.
- torch.utils._pytree: "<enum ...> is an Enum subclass and is now natively supported by torch.compile ...":
  torchao registers its Enums with pytree, which torch 2.13 deprecates (torchao's code, not ours).
- bitsandbytes, CPU backend: "Failed to load CPU gemm_4bit_forward from kernels-community": an optional
  downloaded kernel (the `kernels` package, needs the Hub); bitsandbytes uses its own NF4 kernel instead.
- mlflow, logging a dataset input: "The specified dataset source can be interpreted in multiple ways": a local
  folder matches two of its source classes; it picks one, which is what is wanted (a Python warning).
- bitsandbytes, LLM.int8 on every forward call of every projection: "MatMul8bitLt: inputs will be cast from
  torch.float32 to float16 during quantization": how its kernel quantizes activations (through float16), said
  once per call (1,208 lines in one default `make run`). What it costs in accuracy is the variant's measured
  accuracy; its run-time precision is in the report.
- mlflow, logging or loading the packaged pyfunc model: "Add type hints to the `predict` method to enable data
  validation ...": we log an explicit signature (a `text` column in, a label out), which is what the hints
  would infer (a Python warning).
- transformers, when the ONNX exporter or OpenVINO's converter walks a model's attributes: "`loss_type=None` was
  set in the config but it is unrecognized. Using the default loss: `ForCausalLMLoss`": the `loss_function`
  property read during tracing; no loss is computed there (the classifier's own loss is used in training).
  Once per exported variant (seven lines in a default `make run`).
- torch, when int8_dynamic / int8_static pack their int8 weights for fbgemm: "torch.quantize_per_tensor,
  torch.quantize_per_channel and other quantized tensor creation functions ... are deprecated": the packed
  weight is built from a per-channel quantized tensor, the only input fbgemm's prepack takes in torch 2.13; the
  deprecation asks nothing of a user (a Python warning, once per process).
- transformers' per-file progress bars ("Loading weights", "Writing model shards"): a bar per small file,
  not a step a user waits on. Our own long steps (training, evaluation, the benchmark) keep theirs.

`PTQFLOW_VERBOSE=1` shows everything.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

KNOWN_NOISE: dict[str, tuple[str, ...]] = {  # logger name -> substrings of the messages dropped there
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast from",),
    "transformers.modeling_utils": ("was set in the config but it is unrecognized. Using the default loss",),
}

KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (  # (message regex, module regex) of Python warnings dropped
    ("The specified dataset source can be interpreted in multiple ways", r"mlflow\."),
    (r".*Add type hints to the `predict` method", r"mlflow\."),  # the message starts with a colour code
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation", r"ptqflow\.quantize\."),
)


class _DropKnown(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def quiet() -> None:
    """Install the filters above (before the libraries are imported: loggers exist by name) and switch off
    transformers' per-file progress bars. Idempotent; does nothing with PTQFLOW_VERBOSE=1."""
    if os.environ.get("PTQFLOW_VERBOSE") == "1":
        return
    for name, fragments in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(fragments))
    for message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    if not getattr(warnings.showwarning, "ptqflow_quiet", False):
        # and where a library puts its own filter in front of ours (MLflow wraps a call in `simplefilter("once")`),
        # the warning is dropped when it would be shown
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            text, where = str(message), filename.replace("/", ".")
            if any(re.match(m, text) and re.search(mod, where) for m, mod in KNOWN_WARNINGS):
                return
            shown(message, category, filename, lineno, file, line)

        show.ptqflow_quiet = True
        warnings.showwarning = show
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by huggingface_hub and transformers on import
