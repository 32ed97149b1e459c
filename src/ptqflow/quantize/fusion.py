"""Fused activation quantization for the static W8A8 layers on a GPU (`fuse` of `fp8` and of `int8_static` with
`kernel: triton`): the op that produces a projection's input writes the 8-bit codes directly, so no projection
reads a half-precision input only to quantize it.

- `norm`: a LayerNorm / RMSNorm whose output feeds only 8-bit projections (a pre-norm block: GPT-2's ln_1 -> c_attn
  and ln_2 -> c_fc, Llama's input norm -> q, k, v) becomes runtimes/norm_codes.py's kernel, emitting the codes of
  x / s_x with the consumers' calibrated static scale s_x (consumers of one norm share its largest s_x).
- `activation`: a GELU between two 8-bit projections (up -> GELU -> down: GPT-2's and BERT's MLP) moves into the
  epilogue of the up projection's GEMM (runtimes/gemm8.py): z = s_x s_w acc + b, GELU(z), codes of GELU(z) / s_down,
  so neither z nor GELU(z) is written in half precision.

The residual stream, attention and everything else stay in the scheme's half precision. Which ops feed which is
found by running one probe batch with hooks (a norm's output tensor that is a projection's input tensor, a GELU
between a projection's output and another's input), not by names; a tensor that any other op also reads (a
post-norm block's residual add) disqualifies its producer. The fused model's logits are then compared with the
unfused one's on the probe; a pair that changes them is left unfused (recorded). What was fused is counted.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import PtqflowError

PARTS = ("norm", "activation")
TANH_GELU = {"NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation", "GELUPytorchTanh"}
ERF_GELU = {"GELUActivation"}
TOLERANCE = 0.1  # largest relative L2 difference of the probe's logits, fused against unfused


def norm_kind(module: nn.Module) -> str | None:
    """layernorm / rms for the norms the kernel computes (formulas (1), (2) of norm_codes.py), else None."""
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine and len(module.normalized_shape) == 1:
        return "layernorm"
    if name.endswith("RMSNorm") and getattr(module, "weight", None) is not None and _eps(module) is not None:
        return "rms"
    return None


def _eps(module: nn.Module) -> float | None:
    for attr in ("eps", "variance_epsilon"):
        if isinstance(getattr(module, attr, None), float):
            return getattr(module, attr)
    return None


def activation_kind(module: nn.Module) -> str | None:
    """gelu_tanh / gelu_erf for the activations the GEMM epilogue computes (gemm8.py), else None."""
    name = type(module).__name__
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu_erf"
    if name in TANH_GELU:
        return "gelu_tanh"
    if name in ERF_GELU and not getattr(module, "use_gelu_python", False):
        return "gelu_erf"
    return None


def fusable(layer: nn.Module) -> bool:
    """A projection layer that takes codes as input: it says its code type (`code`) and has a static input scale."""
    return getattr(layer, "code", None) is not None


class FusedNorm(nn.Module):
    """A norm emitting its consumers' 8-bit codes (norm_codes.py)."""

    def __init__(self, norm: nn.Module, scale: torch.Tensor, code: str):
        super().__init__()
        from ..runtimes.gemm8 import OUTPUTS

        self.rms, self.eps, self.out = norm_kind(norm) == "rms", float(_eps(norm)), OUTPUTS[code]
        self.weight, self.bias = norm.weight, getattr(norm, "bias", None)
        self.register_buffer("scale", scale.detach().clone().float().reshape(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..runtimes.norm_codes import norm_codes

        return norm_codes(x, self.weight, self.bias, self.scale, self.eps, self.rms, self.out)


class FusedUp(nn.Module):
    """An up projection with the activation and the down projection's input quantization in its epilogue (gemm8.py)."""

    ptqflow_projection = True  # still the body projection structure.py counted

    def __init__(self, layer: nn.Module, activation: str, down: nn.Module):
        super().__init__()
        from ..runtimes.gemm8 import ACTIVATIONS, OUTPUTS

        self.layer, self.act, self.out = layer, ACTIVATIONS[activation], OUTPUTS[down.code]
        self.code = layer.code
        self.down_scale = down.input_scale  # shared with the down projection (a buffer of it)
        wq, s_w = layer.weight_codes()
        self.register_buffer("weight_scale_rows", s_w.detach().float().reshape(-1).expand(wq.shape[0]).contiguous())

    @property
    def input_scale(self) -> torch.Tensor:
        return self.layer.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..runtimes.gemm8 import gemm8_fused

        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        xq = x2 if x2.dtype == self.layer.code_dtype else self.layer.quantize_input(x2)
        wq, _ = self.layer.weight_codes()
        y = gemm8_fused(xq, wq, self.layer.input_scale, self.weight_scale_rows, self.layer.bias, self.down_scale, self.act, self.out)
        return y.reshape(*lead, y.shape[-1])


class _OtherUses(TorchFunctionMode):
    """Records the tensors that an op outside the tracked modules (projections, norms, activations) takes as input,
    size and dtype queries aside: a norm's output found here also feeds something else (a post-norm residual)."""

    METADATA = {"size", "dim", "__get__", "numel", "__len__", "stride", "is_floating_point", "element_size", "data_ptr"}

    def __init__(self):
        super().__init__()
        self.depth, self.ids, self.held = 0, set(), []  # held: no id is reused while the probe runs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0 and getattr(func, "__name__", "") not in self.METADATA:
            for leaf in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    self.ids.add(id(leaf))
                    self.held.append(leaf)
        return func(*args, **kwargs)


def plan(model: nn.Module, probe: dict[str, torch.Tensor]) -> tuple[list[tuple[str, list[str]]], list[tuple[str, str, str]]]:
    """(norm -> the projections it feeds, (up, activation, down) chains), found on one probe forward by tensor
    identity: a norm's output that is the input of fusable projections and of nothing else; a supported activation
    whose input is only a fusable projection's output and whose output is only one fusable projection's input."""
    outputs: dict[int, str] = {}  # id(tensor) -> producing module
    inputs: dict[int, list[str]] = {}  # id(tensor) -> consuming modules
    act_io: dict[str, tuple[int, int]] = {}
    keep: list[torch.Tensor] = []  # held so that ids are not reused during the probe
    uses = _OtherUses()
    hooks = []
    for name, module in model.named_modules():
        if fusable(module) or norm_kind(module) or activation_kind(module):
            def enter(mod, args, name=name):
                uses.depth += 1

            def leave(mod, args, result, name=name):
                uses.depth -= 1
                x = args[0] if args else None
                keep.extend([t for t in (x, result) if isinstance(t, torch.Tensor)])
                if isinstance(x, torch.Tensor):
                    inputs.setdefault(id(x), []).append(name)
                if isinstance(result, torch.Tensor):
                    outputs[id(result)] = name
                if activation_kind(mod) and isinstance(x, torch.Tensor):
                    act_io[name] = (id(x), id(result))
            hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with torch.inference_mode(), uses:
            model(**probe)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    only = lambda tid, names: tid not in uses.ids and all(fusable(modules[n]) for n in names)  # noqa: E731
    norms = [(producer, inputs[tid]) for tid, producer in outputs.items()
             if norm_kind(modules[producer]) and inputs.get(tid) and only(tid, inputs[tid])]
    chains = []
    for act, (tin, tout) in act_io.items():
        up, downs = outputs.get(tin), inputs.get(tout, [])
        if up and fusable(modules[up]) and inputs.get(tin) == [act] and tin not in uses.ids and len(downs) == 1 and only(tout, downs):
            chains.append((up, act, downs[0]))
    return norms, chains


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    from ..structure import replace_module

    old = model.get_submodule(name)
    replace_module(model, name, new)
    return old


def _fuse_norm(model: nn.Module, norm: str, consumers: list[str]) -> Callable[[], None]:
    layers = [model.get_submodule(c) for c in consumers]
    codes = {layer.code for layer in layers}
    if len(codes) != 1:
        raise PtqflowError(f"{norm} feeds projections of different code types ({', '.join(sorted(codes))})")
    saved = [layer.input_scale.detach().clone() for layer in layers]
    scale = torch.stack([s.reshape(()) for s in saved]).max()
    for layer in layers:
        layer.input_scale.copy_(scale)  # one code stream for every consumer
    old = _replace(model, norm, FusedNorm(model.get_submodule(norm), scale, codes.pop()))

    def undo() -> None:
        _replace(model, norm, old)
        for layer, s in zip(layers, saved):
            layer.input_scale.copy_(s)
    return undo


def _fuse_activation(model: nn.Module, up: str, act: str, down: str) -> Callable[[], None]:
    layer, kind = model.get_submodule(up), activation_kind(model.get_submodule(act))
    old_up = _replace(model, up, FusedUp(layer, kind, model.get_submodule(down)))
    old_act = _replace(model, act, nn.Identity())

    def undo() -> None:
        _replace(model, up, old_up)
        _replace(model, act, old_act)
    return undo


def _logits(model: nn.Module, probe: dict) -> torch.Tensor:
    with torch.inference_mode():
        out = model(**probe)
    return (out.logits if hasattr(out, "logits") else out[0]).float()


def _agrees(model: nn.Module, probe: dict, reference: torch.Tensor) -> str | None:
    """None when the fused model's probe logits match the reference, else why not."""
    try:
        got = _logits(model, probe)
    except Exception as exc:  # an op that cannot take codes (a norm whose output also feeds the residual)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    err = float((got - reference).norm() / reference.norm().clamp_min(1e-12))
    return None if err <= TOLERANCE else f"logits differ by {err:.3f} (relative L2) from the unfused model's"


def probe_batch(model: nn.Module, device: torch.device, rows: int = 2, length: int = 32) -> dict[str, torch.Tensor]:
    """Seeded random token ids (the probe only has to exercise every op once)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(model.config.vocab_size), (rows, length), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def fuse(model: nn.Module, parts: list[str], probe: dict[str, torch.Tensor]) -> dict:
    """Fuse what `parts` names (PARTS) into `model` in place; returns what was fused, counted, and what was not, why.
    The probe runs in eval mode (dropout would make the comparison meaningless)."""
    training = model.training
    model.eval()
    try:
        return _fuse(model, parts, probe)
    finally:
        model.train(training)


def _fuse(model: nn.Module, parts: list[str], probe: dict[str, torch.Tensor]) -> dict:
    norms, chains = plan(model, probe)
    reference = _logits(model, probe)
    candidates = ([("norm", n, c) for n, c in norms] if "norm" in parts else []) + \
                 ([("activation", u, a, d) for u, a, d in chains] if "activation" in parts else [])

    def apply(candidate) -> Callable[[], None]:
        return _fuse_norm(model, *candidate[1:]) if candidate[0] == "norm" else _fuse_activation(model, *candidate[1:])

    undos = [apply(c) for c in candidates]
    rejected: dict[str, str] = {}
    if candidates and _agrees(model, probe, reference) is not None:  # find the pairs that break it, one at a time
        for undo in reversed(undos):
            undo()
        kept = []
        for c in candidates:
            undo = apply(c)
            why = _agrees(model, probe, reference)
            if why is None:
                kept.append(c)
            else:
                rejected[c[1]] = why
            undo()
        for c in kept:
            apply(c)
        candidates = kept
        if candidates and (why := _agrees(model, probe, reference)) is not None:
            raise PtqflowError(f"fused W8A8: the fused model disagrees with the unfused one ({why})")
    fused_norms = [c[1] for c in candidates if c[0] == "norm"]
    fused_acts = [c[2] for c in candidates if c[0] == "activation"]
    return {"norms": len(fused_norms), "activations": len(fused_acts), "norm_names": fused_norms,
            "activation_names": fused_acts, "not_fused": rejected}
