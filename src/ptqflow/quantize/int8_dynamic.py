"""`int8_dynamic` (W8A8): int8 weights kept in int8 in memory, activations quantized per token at run time,
int8 x int8 -> int32 matrix products.

Each projection of the model's body (every nn.Linear / GPT-2 Conv1D that structure.py finds; the head stays
in float) y = x W^T + b (W: [N out, K in]; a missing bias counts as 0) becomes an `Int8DynamicLinear`:

    weights, symmetric per output channel j (once, at quantize time):
        s_w[j] = max_k |W[j, k]| / 127,     Wq[j, k] = round(W[j, k] / s_w[j]) in [-127, 127]       (1)
    activations, symmetric per token t (every forward pass):
        s_x[t] = max_k |x[t, k]| / 127,     xq[t, k] = round(x[t, k] / s_x[t]) in [-127, 127]       (2)
    product, accumulated exactly in int32, rescaled in float32:
        y[t, j] = s_x[t] * s_w[j] * sum_k xq[t, k] Wq[j, k] + b[j]                                   (3)

so |W - s_w Wq| <= s_w / 2 and |x - s_x xq| <= s_x / 2 elementwise (zero rows get scale 1, exact).

The int8 product runs in a kernel chosen per device (`kernel: auto`), recorded in the metrics:
- `int_mm`: `torch._int_mm` (cuBLASLt on CUDA), formulas (2)-(3) exactly. CUDA needs K and N multiples of
  8 (checked per layer: a layer that does not fit runs formula (3) on dequantized weights instead, counted
  as a fallback) and more than 16 rows (smaller inputs are padded with zero rows).
- `fbgemm`: PyTorch's quantized CPU kernel (`quantized::linear_dynamic`, the one `quantize_dynamic` uses;
  fast without VNNI). It quantizes activations per *tensor* (asymmetric uint8 with PyTorch's
  `reduce_range`, i.e. 7 bits, which avoids int16 saturation on CPUs without VNNI) instead of formula (2);
  the weights are the same int8 per-channel codes (1), packed once at load.
`auto` picks `int_mm` on CUDA and `fbgemm` on CPU (`torch._int_mm` is very slow on CPUs without VNNI).
Everything else (layer norms, attention, the head) runs in `dtype`; `embeddings` (see embedding.py)
keeps the embedding tables quantized too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn

from .. import structure

from ..errors import PtqflowError
from .common import DTYPES, absmax_int8_rows, load_finetuned, read_weights
from .embedding import EmbeddingMode, attach_embeddings, count_quantized_embeddings, describe, quantize_embeddings
from .registry import Scheme

WEIGHTS_FILE = "model.int8dyn.safetensors"
FORMAT = "ptqflow-int8-w8a8-per-channel"
INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA wants more than 16 rows
INT_MM_MULTIPLE = 8  # ... and K, N multiples of 8


@dataclass
class Int8DynamicOptions:
    kernel: Literal["auto", "int_mm", "fbgemm"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # everything that is not an int8 product
    embeddings: EmbeddingMode = "keep"


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wq (int8, [N, K]) and s_w (float32, [N]) of a weight W [N, K] by formula (1)."""
    return absmax_int8_rows(w)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xq (int8, [M, K]) and s_x (float32, [M, 1]) of activations x [M, K] by formula (2)."""
    q, scale = absmax_int8_rows(x)
    return q, scale[:, None]


def int_mm_fits(k: int, n: int) -> bool:
    return k % INT_MM_MULTIPLE == 0 and n % INT_MM_MULTIPLE == 0


class Int8DynamicLinear(nn.Module):
    """y = x W^T + b with W held as int8 per-channel codes; the product in int8 (formulas (1)-(3))."""

    ptqflow_projection = True  # structure.py counts it as a body projection

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype))
        self.kernel = "int_mm"
        self._packed = None  # fbgemm's packed weights
        self._packed_bytes = 0

    def set_kernel(self, kernel: str) -> str:
        """Use `kernel` (int_mm / fbgemm / dequant); int_mm on CUDA falls back to dequant for shapes it cannot take."""
        if kernel == "int_mm" and self.weight_int8.is_cuda and not int_mm_fits(self.in_features, self.out_features):
            kernel = "dequant"
        if kernel == "fbgemm":
            zero = torch.zeros(self.out_features, dtype=torch.long)
            qweight = torch._make_per_channel_quantized_tensor(self.weight_int8, self.weight_scale.double(), zero, 0)
            self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias.float())
            self._packed_bytes = self.weight_int8.numel() + 12 * self.out_features  # codes + scale, zero point, bias
            # the packed copy is the one used: release the unpacked codes (the footprint counts the packed bytes)
            self.weight_int8 = torch.empty(0, dtype=torch.int8)
        self.kernel = kernel
        return kernel

    def extra_memory_bytes(self) -> int:
        """Bytes held outside parameters and buffers (fbgemm's packed weights)."""
        return self._packed_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.kernel == "fbgemm":
            y = torch.ops.quantized.linear_dynamic(x2.to(torch.float32), self._packed, True).to(x.dtype)
        elif self.kernel == "int_mm":
            xq, xs = quantize_per_token(x2)
            rows = xq.shape[0]
            if rows < INT_MM_MIN_ROWS:
                acc = torch._int_mm(torch.nn.functional.pad(xq, (0, 0, 0, INT_MM_MIN_ROWS - rows)), self.weight_int8.t())[:rows]
            else:
                acc = torch._int_mm(xq, self.weight_int8.t())
            # int32 * float32 -> float32: one multiply by the outer product of the scales (fusable into the GEMM epilogue)
            y = (acc * (xs * self.weight_scale)).to(x.dtype) + self.bias.to(x.dtype)
        else:  # dequant: formula (3) with the weights dequantized, activations unquantized
            w = self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
            y = x2 @ w.t() + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def pick_kernel(kernel: str, device: torch.device) -> str:
    """`auto` -> int_mm on CUDA, fbgemm on CPU; fbgemm requested on CUDA is refused."""
    if kernel == "auto":
        kernel = "int_mm" if device.type == "cuda" else "fbgemm"
    if kernel == "fbgemm":
        if device.type != "cpu":
            raise PtqflowError("int8_dynamic: kernel 'fbgemm' is a CPU kernel; use kernel 'int_mm' or 'auto' on CUDA")
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise PtqflowError("int8_dynamic: this PyTorch build has no fbgemm engine (x86 only); use kernel 'int_mm'")
    return kernel


def quantize(src_dir: Path, out_dir: Path, options: Int8DynamicOptions) -> dict:
    model = load_finetuned(src_dir)
    n_parameters = model.num_parameters()
    dtype = DTYPES[options.dtype]
    found = structure.of(model)
    tensors: dict[str, torch.Tensor] = {}
    for name in found.projections:
        module = model.get_submodule(name)
        w = structure.weight_out_in(module)  # Conv1D stores W^T
        q, s = quantize_weight(w)
        bias = module.bias if module.bias is not None else torch.zeros(w.shape[0])
        tensors[f"{name}.weight_int8"], tensors[f"{name}.weight_scale"] = q.contiguous(), s
        tensors[f"{name}.bias"] = bias.detach().to(dtype).contiguous()
        structure.replace_module(model, name, nn.Identity())
    embeddings = quantize_embeddings(model, options.embeddings, dtype)
    tensors.update(embeddings)
    tensors.update({k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if k not in tensors})
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": FORMAT, "int8_layers": str(len(found.projections))})
    shutil.copy(src_dir / "config.json", out_dir / "config.json")
    return {
        "runtime_dtype": f"int8 weights x int8 activations -> int32 in {len(found.projections)} projections; {options.dtype} "
        "elsewhere; " + describe(options.embeddings),
        "quantized_modules": len(found.projections),
        "conv1d_projections": len(found.conv1d),
        "kept_full_precision": list(found.head),
        "quantized_embeddings": len(embeddings) // 2,
        "n_parameters": n_parameters,
    }


def build_skeleton(config, options: Int8DynamicOptions, tensors: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, int]:
    """The model with Int8DynamicLinear / QuantizedEmbedding modules in place, ready for `load_state_dict`,
    and how many projections its structure has."""
    from transformers import AutoModelForSequenceClassification

    dtype = DTYPES[options.dtype]
    model = AutoModelForSequenceClassification.from_config(config).to(dtype)
    names = structure.of(model).projections
    for name in names:
        k, n = structure.in_out_features(model.get_submodule(name))
        structure.replace_module(model, name, Int8DynamicLinear(k, n, dtype))
    attach_embeddings(model, options.embeddings, tensors, dtype)
    return model, len(names)


def load(artifact_dir: Path, options: Int8DynamicOptions, device: torch.device) -> torch.nn.Module:
    kernel = pick_kernel(options.kernel, device)
    if kernel == "fbgemm":
        torch.backends.quantized.engine = "fbgemm"
    path = artifact_dir / WEIGHTS_FILE
    tensors, _ = read_weights(path)
    from transformers import AutoConfig

    model, expected = build_skeleton(AutoConfig.from_pretrained(str(artifact_dir)), options, tensors)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise PtqflowError(f"{path}: does not match the model config ({str(exc).splitlines()[0]})") from None
    model = model.to(device)
    layers = [m for m in model.modules() if isinstance(m, Int8DynamicLinear)]
    used = [layer.set_kernel(kernel) for layer in layers]
    left = [n for n in structure.of(model).projections if not isinstance(model.get_submodule(n), Int8DynamicLinear)]
    structure.expect(len(layers) - len(left), expected, "int8 projections", str(path))
    model.ptqflow_runtime = {
        "kernel": kernel,
        "int8_layers": used.count(kernel),
        "fallback_layers": used.count("dequant") if kernel != "dequant" else 0,
        "quantized_embeddings": count_quantized_embeddings(model),
        **({"quantized_engine": "fbgemm"} if kernel == "fbgemm" else {}),
    }
    return model


SCHEME = Scheme("int8_dynamic", Int8DynamicOptions, quantize, load, "W8A8: int8 weights in memory, per-token int8 activations, int32 products")
