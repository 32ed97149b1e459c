"""`fp8` (W8A8, float8 e4m3, Hopper / Ada GPUs): every body projection y = x W^T + b (W: [N, K]) becomes one
`torch._scaled_mm` with the scales applied in the GEMM epilogue, the bias fused, bfloat16 out. Everything
else (layer norms, attention, the head) runs in bfloat16. 448 is e4m3's largest finite value.

    activations: static (calibrated once, per tensor):
        a = max over calibration batches of max_{t,k} |x[t, k]|,     s_x = a / 448                     (1)
        xq = e4m3(clamp(x / s_x, -448, 448))     a multiply and a saturating cast: torch.compile fuses
                                                 them into the kernel that produced x (layer norm, GELU)
    weights (per tensor, to pair with a per-tensor activation scale in the epilogue):
        s_w = max_{j,k} |W[j, k]| / 448,        Wq = e4m3(W / s_w)                                      (2)
    activations: dynamic (per row, every pass), weights per output row:
        s_x[t] = max_k |x[t, k]| / 448,  s_w[j] = max_k |W[j, k]| / 448                                (3)
    product:  y[t, j] = s_x[.] * s_w[.] * sum_k xq[t, k] Wq[j, k] + b[j]     (fp32 accumulation)          (4)

e4m3 keeps 3 mantissa bits: |v - e4m3(v)| <= 2^-4 |v| for |v| in the normal range (>= 2^-6), so
|y - y_ref| <= sum_k |x_k W_jk| ((1 + 2^-4)^2 - 1) + the subnormal floor + bf16 rounding of y (tests use it).
Calibration rows come from the validation split (calibration.py), never the test split. `keep_bf16` names
projections (substrings of their module names) that stay in bfloat16; how many ran in fp8 is counted.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from .. import structure
from ..calibration import Calibration
from ..config import check
from ..errors import PtqflowError
from .common import load_finetuned, read_weights, runtime_device
from .registry import Scheme

WEIGHTS_FILE = "model.fp8.safetensors"
E4M3_MAX = 448.0
ROWS_MULTIPLE = 16  # torch._scaled_mm wants both dimensions of its first operand divisible by 16
FP8 = getattr(torch, "float8_e4m3fn", None)


@dataclass
class Fp8Options:
    activations: Literal["static", "dynamic"] = "static"
    calibration_rows: int = 256  # static: validation rows the activation ranges are fitted on
    calibration_batch_size: int = 16
    fast_accum: bool = False  # cuBLASLt's fast fp8 accumulation (faster, less exact)
    keep_bf16: list[str] = field(default_factory=list)  # projections (name substrings) left in bfloat16

    def __post_init__(self) -> None:
        check(self.calibration_rows >= 1, "calibration_rows", "a positive integer", self.calibration_rows)
        check(self.calibration_batch_size >= 1, "calibration_batch_size", "a positive integer", self.calibration_batch_size)


def available(options: Fp8Options, device: torch.device) -> str | None:
    if FP8 is None or not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no float8 matrix product"
    if device.type != "cuda":
        return "float8 matrix products need a CUDA GPU with compute capability >= 8.9 (H100, H200, L4)"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"float8 matrix products need compute capability >= 8.9; this GPU has {torch.cuda.get_device_capability(device)}"
    return None


def to_e4m3(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3(clamp(t / scale, -448, 448)): saturating, as formulas (1)-(3) say."""
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


def absmax_scale(t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """max |t| / 448 over everything (dim None) or along `dim` (keepdim); 1 where that max is 0."""
    a = t.detach().abs().float().amax() if dim is None else t.detach().abs().float().amax(dim=dim, keepdim=True)
    return torch.where(a > 0, a / E4M3_MAX, torch.ones_like(a))


class Fp8Linear(nn.Module):
    """y = x W^T + b as one `torch._scaled_mm` (formulas (1)-(4)); bfloat16 in and out."""

    ptqflow_projection = True  # structure.py counts it as a body projection

    def __init__(self, in_features: int, out_features: int, static: bool, fast_accum: bool):
        super().__init__()
        self.in_features, self.out_features, self.static, self.fast_accum = in_features, out_features, static, fast_accum
        self.register_buffer("weight_fp8", torch.zeros(out_features, in_features, dtype=FP8))
        self.register_buffer("weight_scale", torch.ones(() if static else (1, out_features), dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32))  # static: s_x of formula (1)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        pad = (-rows) % ROWS_MULTIPLE
        if pad:
            x2 = torch.nn.functional.pad(x2, (0, 0, 0, pad))
        scale = self.input_scale if self.static else absmax_scale(x2, dim=1)
        y = torch._scaled_mm(to_e4m3(x2, scale), self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             bias=self.bias, out_dtype=torch.bfloat16, use_fast_accum=self.fast_accum)
        return y[:rows].reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, static={self.static}"


@torch.inference_mode()
def input_absmax(model: nn.Module, names: list[str], batches: list[dict], device: torch.device) -> dict[str, float]:
    """max |x| of the input of each module in `names` over the calibration batches (formula (1)'s a)."""
    found = {n: 0.0 for n in names}
    hooks = []
    for name in names:
        def hook(_module, args, name=name):
            found[name] = max(found[name], float(args[0].detach().abs().max()))
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for batch in batches:
            model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in hooks:
            h.remove()
    return found


def _selected(names: tuple[str, ...], keep: list[str]) -> list[str]:
    return [n for n in names if not any(k in n for k in keep)]


def quantize(src_dir: Path, out_dir: Path, options: Fp8Options, calibration: Calibration) -> dict:
    model = load_finetuned(src_dir)
    n_parameters = model.num_parameters()
    structure.conv1d_to_linear(model)
    found = structure.of(model)
    chosen = _selected(found.projections, options.keep_bf16)
    device = runtime_device()
    ranges = {}
    if options.activations == "static":
        batches = calibration.batches(options.calibration_rows, options.calibration_batch_size)
        ranges = input_absmax(model.to(device), chosen, batches, device)
        model.to("cpu")
    tensors: dict[str, torch.Tensor] = {}
    for name in chosen:
        module = model.get_submodule(name)
        w = module.weight.detach().float()
        s_w = absmax_scale(w) if options.activations == "static" else absmax_scale(w, dim=1).reshape(1, -1)
        tensors[f"{name}.weight_fp8"] = to_e4m3(w, s_w.reshape(-1, 1) if s_w.dim() else s_w).contiguous()
        tensors[f"{name}.weight_scale"] = s_w.contiguous()
        tensors[f"{name}.input_scale"] = torch.tensor(max(ranges.get(name, 0.0), 1e-12) / E4M3_MAX, dtype=torch.float32)
        bias = module.bias if module.bias is not None else torch.zeros(w.shape[0])
        tensors[f"{name}.bias"] = bias.detach().to(torch.bfloat16).contiguous()
        structure.replace_module(model, name, nn.Identity())
    tensors.update({k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items() if k not in tensors})
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"fp8_layers": ",".join(chosen)})
    shutil.copy(src_dir / "config.json", out_dir / "config.json")
    return {
        "runtime_dtype": f"float8 e4m3 weights x float8 activations ({options.activations} scales) in {len(chosen)} "
                         "projections, scales in the GEMM epilogue; bfloat16 elsewhere",
        "quantized_modules": len(chosen),
        "kept_bf16": [n for n in found.projections if n not in chosen],
        "kept_full_precision": list(found.head),
        "calibration": ({"rows": sum(len(b["input_ids"]) for b in batches), "source": calibration.source}
                        if options.activations == "static" else None),
        "n_parameters": n_parameters,
    }


def load(artifact_dir: Path, options: Fp8Options, device: torch.device) -> torch.nn.Module:
    path = artifact_dir / WEIGHTS_FILE
    tensors, meta = read_weights(path)
    layers = [n for n in (meta.get("fp8_layers") or "").split(",") if n]
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(artifact_dir))).to(torch.bfloat16)
    structure.conv1d_to_linear(model)
    for name in layers:
        k, n = structure.in_out_features(model.get_submodule(name))
        structure.replace_module(model, name, Fp8Linear(k, n, options.activations == "static", options.fast_accum))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise PtqflowError(f"{path}: does not match the model config ({str(exc).splitlines()[0]})") from None
    model = model.to(device)
    fp8 = sum(isinstance(m, Fp8Linear) for m in model.modules())
    structure.expect(fp8, len(layers), "float8 projections", str(path))
    model.ptqflow_runtime = {"kernel": "torch._scaled_mm", "fp8_layers": fp8, "activations": options.activations,
                             "bf16_layers": len(structure.of(model).projections) - fp8, "fast_accum": options.fast_accum}
    return model


SCHEME = Scheme("fp8", Fp8Options, quantize, load,
                "W8A8 float8 e4m3 through torch._scaled_mm (static calibrated or dynamic per-row activation scales)",
                available=available, calibrates=True)
