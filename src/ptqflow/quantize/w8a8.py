"""What the W8A8 schemes share (fp8.py: float8 e4m3 through `torch._scaled_mm`; int8_static.py: int8 through a
Triton kernel or torch._int_mm): the calibration statistics of projection inputs over real tokens
(`input_stats`), writing (`save_artifact`) and loading the artifact; fp8 quantizes with `quantize` here
(int8_static has its own, for its smoothing, ranges, sensitivity and budget). A scheme supplies a `Codec`: how it encodes a weight and which
layer runs the product.

    static activation scale of a projection, per tensor, on the calibration rows (validation split, pads excluded):
        a = max over calibration batches of max_{t,k} |x[t, k]|,     s_x = a / Q                        (1)
    (Q = the largest code: 448 for e4m3, 127 for int8). At run time x -> code(x / s_x) is a multiply, a
    clamp and a cast that torch.compile fuses into the kernel that produced x (layer norm, GELU).

Every body projection structure.py finds is quantized except those whose module name contains one of
`keep_bf16`; the head and everything else run in bfloat16 (or the scheme's `dtype`). What ran in 8 bits is
counted at load.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn

from .. import structure
from ..calibration import Calibration
from ..config import check
from ..errors import PtqflowError
from .common import load_finetuned, read_weights, runtime_device, skeleton


@dataclass
class CalibratedOptions:
    """The options every W8A8 scheme has (its own options dataclass extends these)."""

    calibration_rows: int = 256  # static: validation rows the activation ranges are fitted on
    calibration_batch_size: int = 16
    keep_bf16: list[str] = field(default_factory=list)  # projections (name substrings) left in bfloat16
    fuse: list[str] = field(default_factory=list)  # GPU: producers that emit the codes (fusion.py): norm, activation

    def __post_init__(self) -> None:
        from .fusion import PARTS

        check(isinstance(self.fuse, list) and all(p in PARTS for p in self.fuse), "fuse", f"a list of {', '.join(PARTS)}", self.fuse)
        check(self.calibration_rows >= 1, "calibration_rows", "a positive integer", self.calibration_rows)
        check(self.calibration_batch_size >= 1, "calibration_batch_size", "a positive integer", self.calibration_batch_size)


@dataclass(frozen=True)
class Codec:
    label: str  # "float8 e4m3", "int8"
    weights_file: str
    qmax: float  # Q of formula (1)
    encode: Callable[[torch.Tensor, Any], dict[str, torch.Tensor]]  # W [N, K] float32 -> the layer's weight buffers
    layer: type[nn.Module]  # layer(K in, N out, options): empty buffers weight*, input_scale, bias
    kernel: Callable[[Any], str]  # options -> what runs the product (recorded)


def rest_dtype(options: Any) -> torch.dtype:
    """What everything outside the 8-bit products runs in: the scheme's `dtype` option, else bfloat16."""
    return getattr(torch, getattr(options, "dtype", "bfloat16"))


def is_static(options: Any) -> bool:
    return getattr(options, "activations", "static") == "static"


@torch.inference_mode()
def input_stats(model: nn.Module, names: list[str], batches: list[dict], device: torch.device,
                stat: Callable[[str, torch.Tensor], None]) -> None:
    """Run the calibration batches and call `stat(name, x)` with the input of each module in `names`, as
    [tokens, features] over the *real* tokens only: a padded position's activations (which a padded calibration
    batch has many of) are never seen by evaluation's shorter batches and must not set a range."""
    mask: list[torch.Tensor | None] = [None]
    hooks = []
    for name in names:
        def hook(_module, args, name=name):
            x = args[0].detach()
            m = mask[0]
            if m is not None and x.dim() == 3 and x.shape[:2] == m.shape:
                x = x[m.bool()]
            stat(name, x.reshape(-1, x.shape[-1]).float())
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for batch in batches:
            mask[0] = batch.get("attention_mask")
            model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in hooks:
            h.remove()


def input_absmax(model: nn.Module, names: list[str], batches: list[dict], device: torch.device) -> dict[str, float]:
    """max |x| of the input of each module in `names` over the calibration batches' real tokens (formula (1)'s a)."""
    found = {n: 0.0 for n in names}

    def stat(name: str, x: torch.Tensor) -> None:
        found[name] = max(found[name], float(x.abs().max()))

    input_stats(model, names, batches, device, stat)
    return found


def quantize(src_dir: Path, out_dir: Path, options: Any, calibration: Calibration, codec: Codec) -> dict:
    """Write the artifact: the chosen projections' weight codes and scales, s_x (1) when static, bfloat16 rest."""
    model = load_finetuned(src_dir)
    n_parameters = model.num_parameters()
    structure.conv1d_to_linear(model)
    found = structure.of(model)
    chosen = [n for n in found.projections if not any(k in n for k in options.keep_bf16)]
    ranges, batches = {}, []
    if is_static(options):
        device = runtime_device()
        batches = calibration.batches(options.calibration_rows, options.calibration_batch_size)
        ranges = input_absmax(model.to(device), chosen, batches, device)
        model.to("cpu")
    layers = {}
    for name in chosen:
        module = model.get_submodule(name)
        w = module.weight.detach().float()
        bias = module.bias if module.bias is not None else torch.zeros(w.shape[0])
        layers[name] = {**codec.encode(w, options), "bias": bias.detach().to(rest_dtype(options)),
                        "input_scale": torch.tensor(max(ranges.get(name, 0.0), 1e-12) / codec.qmax, dtype=torch.float32)}
    save_artifact(model, layers, src_dir, out_dir, options, codec)
    scales = "static calibrated" if is_static(options) else "dynamic per-row"
    rest = str(rest_dtype(options)).replace("torch.", "") + " elsewhere"
    if getattr(options, "fuse", None):
        rest += "; fused on the GPU (Triton): " + " and ".join(
            {"activation": "GELU + the next projection's codes in the FFN-up GEMM's epilogue",
             "norm": "norms emitting their projections' codes"}[p] for p in options.fuse)
    return {
        "runtime_dtype": f"{codec.label} weights x {codec.label} activations ({scales} scales) in {len(chosen)} "
                         f"projections, scales in the GEMM epilogue ({codec.kernel(options)}); {rest}",
        # the calibrated input range of each projection, largest first: where the outlier dimensions are
        "input_absmax": dict(sorted(((n, round(r, 4)) for n, r in ranges.items()), key=lambda kv: -kv[1])),
        "quantized_modules": len(chosen),
        "kept_bf16": [n for n in found.projections if n not in chosen],
        "kept_full_precision": list(found.head),
        "calibration": ({"rows": sum(len(b["input_ids"]) for b in batches), "source": calibration.source}
                        if is_static(options) else None),
        "n_parameters": n_parameters,
    }


def save_artifact(model: nn.Module, layers: dict[str, dict[str, torch.Tensor]], src_dir: Path, out_dir: Path, options: Any,
                  codec: Codec) -> None:
    """Write `out_dir`: the quantized projections' tensors (`layers`: name -> its tensors), every other tensor of
    `model` in `rest_dtype`, the projections' names in the file's metadata (what `load` rebuilds), the config."""
    tensors: dict[str, torch.Tensor] = {}
    for name, state in layers.items():
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in state.items()})
        structure.replace_module(model, name, nn.Identity())
    dtype = rest_dtype(options)
    tensors.update({k: v.detach().cpu().to(dtype).contiguous() for k, v in model.state_dict().items() if k not in tensors})
    save_file(tensors, str(out_dir / codec.weights_file), metadata={"w8a8_layers": ",".join(layers)})
    shutil.copy(src_dir / "config.json", out_dir / "config.json")


def load(artifact_dir: Path, options: Any, device: torch.device, codec: Codec) -> nn.Module:
    """The artifact as a bfloat16 model whose chosen projections are `codec.layer`s; every one counted."""
    path = artifact_dir / codec.weights_file
    tensors, meta = read_weights(path)
    layers = [n for n in (meta.get("w8a8_layers") or "").split(",") if n]
    model = skeleton(artifact_dir, rest_dtype(options))
    structure.conv1d_to_linear(model)
    for name in layers:
        k, n = structure.in_out_features(model.get_submodule(name))
        structure.replace_module(model, name, codec.layer(k, n, options, device))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise PtqflowError(f"{path}: does not match the model config ({str(exc).splitlines()[0]})") from None
    model = model.to(device)
    quantized = sum(isinstance(m, codec.layer) for m in model.modules())
    structure.expect(quantized, len(layers), f"{codec.label} projections", str(path))
    model.ptqflow_runtime = {"kernel": codec.kernel(options, device), "w8a8_layers": quantized,
                             "activations": getattr(options, "activations", "static"),
                             "bf16_layers": len(structure.of(model).projections) - quantized}
    if options.fuse:
        from .fusion import fuse, probe_batch

        model.ptqflow_runtime["fused"] = fuse(model, options.fuse, probe_batch(model, device))
    return model
