"""`torchao`: torchao's weight quantization configs applied to the body's projections (torchao 0.18).

torchao's `quantize_` swaps the weights of `nn.Linear` modules for quantized tensor subclasses. The body's
projections come from structure.py; GPT-2's are transformers `Conv1D` (y = x W + b with W stored [in, out]),
converted first to `nn.Linear` (weight W^T), exactly. Every projection is quantized (counted and asserted);
embeddings, norms and the classification head stay in `dtype`.

- `int8_weight_only`: W^T in int8 with one absmax scale per output channel; activations stay in `dtype`.
- `int4_weight_only`: W^T in 4 bits (asymmetric, `group_size` input features per scale and zero point),
  tinygemm's packed layout (`tile_packed_to_4d`) that needs CUDA and bfloat16. torchao 0.18's other int4
  layouts (`plain`, `preshuffled`) need the `mslk` CUDA package, so int4 cannot run on a CPU machine.
- `float8_dynamic`: float8 e4m3 weights (per row) and activations (per token, at run time), float8 matrix
  products; needs a GPU with compute capability >= 8.9 (H100 / H200 / L4 / RTX 40xx).

The quantized state is saved in safetensors through torchao's own flattening (tensor data + JSON
metadata; no pickle) and rebuilt from it at load, never re-quantized.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from .. import structure
from ..errors import PtqflowError
from .common import DTYPES, load_finetuned, read_weights, runtime_device, skeleton
from .registry import Scheme

WEIGHTS_FILE = "model.torchao.safetensors"


@dataclass
class TorchaoOptions:
    config: Literal["int8_weight_only", "int4_weight_only", "float8_dynamic"] = "int8_weight_only"
    group_size: int = 128  # int4_weight_only: input features per scale / zero point (32, 64, 128 or 256)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # activations and everything not quantized

    def __post_init__(self) -> None:
        if self.group_size not in (32, 64, 128, 256):
            raise PtqflowError(f"params.yaml: group_size must be one of 32, 64, 128, 256, got {self.group_size}")
        if self.config == "int4_weight_only" and self.dtype != "bfloat16":
            raise PtqflowError("params.yaml: torchao int4_weight_only (tinygemm) computes in bfloat16: set dtype: bfloat16")


def available(options: TorchaoOptions, device: torch.device) -> str | None:
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        return f"torchao is not installed ({exc})"
    if options.config == "int4_weight_only" and device.type != "cuda":
        return ("torchao 0.18 int4 weight-only needs CUDA: its tinygemm layout runs on CUDA only and its plain/"
                "preshuffled layouts need the mslk CUDA package")
    if options.config == "float8_dynamic":
        if device.type != "cuda":
            return "float8 matrix products need a CUDA GPU with compute capability >= 8.9 (H100, H200, L4)"
        if torch.cuda.get_device_capability(device) < (8, 9):
            return f"float8 matrix products need compute capability >= 8.9; this GPU has {torch.cuda.get_device_capability(device)}"
    return None


def ao_config(options: TorchaoOptions):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, PerRow

    if options.config == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if options.config == "int4_weight_only":
        return Int4WeightOnlyConfig(group_size=options.group_size, int4_packing_format="tile_packed_to_4d")
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def quantize(src_dir: Path, out_dir: Path, options: TorchaoOptions) -> dict:
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from torchao.quantization import quantize_

    device = runtime_device()
    model = load_finetuned(src_dir)
    n_parameters = model.num_parameters()
    converted = structure.conv1d_to_linear(model)
    found = structure.of(model)
    names = set(found.projections)
    model = model.to(device=device, dtype=DTYPES[options.dtype])
    quantize_(model, ao_config(options), filter_fn=lambda m, fqn: fqn in names)
    quantized = count_quantized(model)
    if quantized != len(names):
        raise PtqflowError(f"torchao quantized {quantized} of {len(names)} projections")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors, metadata = flatten_tensor_state_dict(state)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(out_dir / WEIGHTS_FILE), metadata=metadata)
    shutil.copy(src_dir / "config.json", out_dir / "config.json")
    return {
        "runtime_dtype": f"torchao {options.config} on {quantized} projections; {options.dtype} activations",
        "quantized_modules": quantized,
        "conv1d_projections": len(converted),
        "kept_full_precision": list(found.head),
        "quantized_on": device.type,
        "n_parameters": n_parameters,
    }


def count_quantized(model: torch.nn.Module) -> int:
    """Linear layers whose weight is a torchao tensor subclass (not a plain tensor)."""
    return sum(
        isinstance(m, torch.nn.Linear) and type(m.weight) not in (torch.Tensor, torch.nn.Parameter) for m in model.modules()
    )


def load(artifact_dir: Path, options: TorchaoOptions, device: torch.device) -> torch.nn.Module:
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    path = artifact_dir / WEIGHTS_FILE
    tensors, metadata = read_weights(path)
    try:
        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
        if leftover:
            raise ValueError(f"unexpected tensors {sorted(leftover)[:3]}")
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise PtqflowError(f"{path}: not a torchao state ({str(exc).splitlines()[0]})") from None
    model = skeleton(artifact_dir)
    structure.conv1d_to_linear(model)
    expected = len(structure.of(model).projections)
    model = model.to(dtype=DTYPES[options.dtype])
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise PtqflowError(f"{path}: does not match the model config ({str(exc).splitlines()[0]})") from None
    model = model.to(device)
    quantized = count_quantized(model)
    structure.expect(quantized, expected, "torchao projections", str(path))
    model.ptqflow_runtime = {"kernel": f"torchao {options.config}", "quantized_layers": quantized}
    return model


SCHEME = Scheme("torchao", TorchaoOptions, quantize, load, "torchao int8 / int4 weight-only, float8 dynamic", available)
