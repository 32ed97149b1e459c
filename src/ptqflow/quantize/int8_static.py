"""`int8_static` (W8A8): int8 weights and int8 activations with a *calibrated* per-tensor activation
scale, so quantizing an activation costs a multiply, a round and a cast that torch.compile fuses into the
kernel producing it (no absmax pass at run time, unlike `int8_dynamic`). Each body projection
y = x W^T + b (W: [N, K]) becomes, with Q_w = 2^(weight_bits-1) - 1 and Q_x = 2^(activation_bits-1) - 1
(127 at 8 bits; fewer bits keep int8 storage and the int8 GEMM, with fewer codes):

    smoothing (option `smoothquant: alpha`, else s = 1), per input channel k (Xiao et al. 2023):
        s[k] = max|x_k|^alpha / max_j |W[j, k]|^(1 - alpha),    x' = x / s,   W' = W diag(s)        (0)
    weights, per output channel j:  s_w[j] = max_k |W'[j, k]| / Q_w,   Wq = round(W' / s_w) in [-Q_w, Q_w]   (1)
    activations, per tensor:        s_x = a / Q_x,   xq = clamp(round(x' / s_x), -Q_x, Q_x)               (2)
        a (option `range`) over the calibration rows' real tokens (pads excluded): absmax = max |x'|, or
        percentile = the mean over calibration batches of the p-th percentile of |x'| (clipping outliers)
    product:                        y[t, j] = bf16( s_x s_w[j] sum_k xq[t, k] Wq[j, k] + b[j] )            (3)

x' W'^T = x W^T exactly, so (0) only moves range from the activations (where one outlier channel stretches s_x
for every channel) into the weights (which have a scale per output channel). (3) runs in one kernel
(`kernel: triton`, CUDA, gemm8.py: exact int32 accumulation, scale, bias and cast in the epilogue), in fbgemm's
static u8 x s8 GEMM with a float32 output (`kernel: fbgemm`, CPU: the activation codes of (2) offset by a zero point
of 128, the offset taken out with the weights' row sums, fast on every x86 CPU: AVX2, AVX-512 VNNI, AMX) or as
`torch._int_mm` then a float rescale (`kernel: int_mm`: oneDNN's int8 GEMM, fast only with VNNI / AMX; on a CPU
without them the variant is skipped, machine.FAST_PATHS). `kernel: auto` = triton on CUDA, fbgemm on a CPU.
fbgemm on a CPU without VNNI sums u8 x s8 pairs in int16 (vpmaddubsw), which saturates when |2 x 255 x 127| >
32,767 (machine.exact_int8_products): there the activation codes of (2) take 7 bits, as ONNX Runtime's and NNCF's
`reduce_range` do (Q_x' = min(Q_x, 63), s_x' = s_x Q_x / Q_x' to keep the range, zero point 64: u8 codes <= 127, so
a pair sum is at most 2 x 127 x 127 = 32,258 and (3) is exact again, at half the activation resolution; measured on
an AVX2-only CPU, a SmoothQuant layer with outlier channels: 29% of the largest output off before, 1.4% after).
Within the calibrated range
|x' - s_x xq| <= s_x / 2 and |W' - s_w Wq| <= s_w / 2 elementwise; activations beyond it saturate at +-Q_x s_x.
The calibrated ranges, largest first, are recorded as `input_absmax`: where the outlier dimensions are.
Everything else (layer norms, attention, the head) runs in `dtype` (bfloat16, or float32 to see the int8
products' effect alone); in (3) "bf16" is then that dtype; `keep_bf16` leaves named projections in it too.

`sensitivity: true` scores each projection quantized alone on validation rows, and `budget: auto` takes the most
sensitive ones out of this format until the validation drop is within `max_drop` (sensitivity.py, formulas there):
to W8A8 first (`budget_fallback: w8a8`, the same int8 GEMM with 8-bit activations), to `dtype` only for those W8A8
cannot hold either (`budget_fallback: float`: straight to `dtype`). The artifact stores each layer's Q_x.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from . import w8a8
from .. import structure
from ..calibration import Calibration
from .common import absmax_int8_rows, runtime_device
from .registry import Scheme

WEIGHTS_FILE = "model.int8static.safetensors"
INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA wants more than 16 rows


@dataclass
class Int8StaticOptions(w8a8.CalibratedOptions):
    activations: Literal["static"] = "static"  # per-tensor scales calibrated once (int8_dynamic: per token at run time)
    kernel: Literal["auto", "triton", "fbgemm", "int_mm"] = "auto"  # auto: triton on CUDA, fbgemm on a CPU
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # everything that is not an int8 product
    activation_bits: int = 8  # Q_x = 2^(bits-1) - 1 codes each side (formula (2)); fewer bits, same int8 GEMM
    weight_bits: int = 8  # Q_w likewise (formula (1))
    range: Literal["absmax", "percentile"] = "absmax"  # how the calibrated range a of formula (2) is taken
    percentile: float = 99.99  # with range: percentile
    smoothquant: float | None = None  # alpha of formula (0); null = no smoothing
    sensitivity: bool = False  # score every projection quantized alone on `sensitivity_rows` validation rows
    sensitivity_rows: int = 256
    budget: Literal["none", "auto"] = "none"  # auto: the most sensitive projections out of this format until within max_drop
    # where budget: auto puts them: w8a8 = 8-bit activations and weights first (the same int8 GEMM), `dtype` (float)
    # only for those W8A8 cannot hold either; float = straight to `dtype`
    budget_fallback: Literal["w8a8", "float"] = "w8a8"
    max_drop: float | None = None  # the budget: validation accuracy drop (fraction) allowed; null: report.max_accuracy_drop
    budget_confidence: float = 0.95  # the drop's one-sided bootstrap bound that must fit (0.5: the point estimate)

    def budgeted(self) -> bool:
        return self.budget == "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..config import check

        for key in ("activation_bits", "weight_bits"):
            check(2 <= getattr(self, key) <= 8, key, "an integer in 2..8", getattr(self, key))
        check(50.0 < self.percentile <= 100.0, "percentile", "a number in (50, 100]", self.percentile)
        check(self.smoothquant is None or 0.0 <= self.smoothquant <= 1.0, "smoothquant", "an alpha in [0, 1] or null",
              self.smoothquant)
        check(self.sensitivity_rows >= 1, "sensitivity_rows", "a positive integer", self.sensitivity_rows)
        check(self.max_drop is None or 0.0 <= self.max_drop < 1.0, "max_drop", "a fraction in [0, 1) (0.005 = 0.5 points) or null",
              self.max_drop)
        check(0.5 <= self.budget_confidence < 1.0, "budget_confidence", "a level in [0.5, 1)", self.budget_confidence)


def resolved_kernel(options: Int8StaticOptions, device: torch.device) -> str:
    if options.kernel != "auto":
        return options.kernel
    return "triton" if device.type == "cuda" else "fbgemm"


def available(options: Int8StaticOptions, device: torch.device) -> str | None:
    kernel = resolved_kernel(options, device)
    if device.type != "cuda" and kernel == "triton":
        return "int8 static W8A8 with kernel: triton runs its int8 GEMM on a CUDA GPU; this machine has none (kernel: fbgemm runs on a CPU)"
    if device.type == "cuda" and kernel == "fbgemm":
        return "kernel: fbgemm is PyTorch's CPU int8 GEMM; on CUDA use kernel: triton or int_mm"
    if device.type == "cpu" and kernel == "int_mm":
        from ..machine import no_fast_path

        slow = no_fast_path("torch._int_mm")
        if slow:
            return f"{slow}: about 50x slower than float32 there; kernel: fbgemm (the CPU default) is fast on every x86 CPU"
    if options.fuse and (kernel != "triton" or options.smoothquant is not None or options.activation_bits != 8):
        return "fuse needs kernel: triton, 8-bit activations and no smoothquant (the fused producers emit plain int8 codes)"
    if kernel == "triton":
        from ..runtimes.gemm8 import missing

        return missing()
    return None


REDUCED_QMAX = 63.0  # 7-bit activation codes (zero point 64: u8 codes 1..127) where u8 x s8 pair sums saturate


class Int8StaticLinear(nn.Module):
    """y = x W^T + b by formulas (1)-(3); bfloat16 in and out."""

    ptqflow_projection = True  # structure.py counts it as a body projection

    def __init__(self, in_features: int, out_features: int, options: Int8StaticOptions, device: torch.device | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.kernel = resolved_kernel(options, device or runtime_device())
        self.out_dtype = getattr(torch, options.dtype)
        self.qmax = float(2 ** (options.activation_bits - 1) - 1)
        self.register_buffer("input_qmax", torch.tensor(self.qmax))  # Q_x of (2), stored: a budget search mixes bit widths
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=self.out_dtype))
        self.smooth = options.smoothquant is not None
        if self.smooth:  # 1 / s of formula (0), per input channel
            self.register_buffer("input_smooth", torch.ones(in_features, dtype=torch.float32))
        self._packed = None  # fbgemm: the packed weights and bias, and s_x, made at the first call
        from ..machine import exact_int8_products

        self.reduce_range = self.kernel == "fbgemm" and not exact_int8_products()  # 7-bit codes: no int16 saturation
        # triton, 8-bit codes, no smoothing: takes the int8 codes of x / s_x as input (fusion.py)
        self.code = "int8" if self.kernel == "triton" and not self.smooth and options.activation_bits == 8 else None
        self.code_dtype = torch.int8

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.qmax = float(self.input_qmax)
        self._packed = None

    def _fbgemm(self, x2: torch.Tensor) -> torch.Tensor:
        """Formulas (2)-(3) in fbgemm: x' is given as s_x xq with xq of (2) (so the op's own rounding, a multiply by
        1 / s_x, finds exactly those codes), quantized with s_x and zero point 128 inside the op, u8 x s8 -> int32,
        s_x s_w[j] and the bias applied, float32 out."""
        if self._packed is None:
            zero = torch.zeros(self.out_features, dtype=torch.long)
            qweight = torch._make_per_channel_quantized_tensor(self.weight_int8, self.weight_scale.double(), zero, 0)
            self._packed = (torch.ops.quantized.linear_prepack(qweight, self.bias.float()), float(self.input_scale))
        packed, s_x = self._packed
        q, zero = (min(self.qmax, REDUCED_QMAX), 64) if self.reduce_range else (self.qmax, 128)
        s_x = s_x * self.qmax / q  # the same range in 7-bit codes on a CPU whose int16 pair sums would saturate
        codes = torch.round(x2 / s_x).clamp_(-q, q).mul_(s_x)  # formula (2), times s_x
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(codes, s_x, zero, packed)

    def extra_memory_bytes(self) -> int:
        """fbgemm's packed copy of the weights, held beside the int8 buffers (packed at the first call)."""
        return self.weight_int8.numel() if self.kernel == "fbgemm" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out_dtype = self.out_dtype if x.dtype == torch.int8 else x.dtype
        if x2.dtype == torch.int8:  # already codes: a fused producer wrote them (fusion.py)
            xq = x2
        else:
            x2 = x2.float() * self.input_smooth if self.smooth else x2.float()  # formula (0)
            if self.kernel == "fbgemm":
                return self._fbgemm(x2).to(self.out_dtype).reshape(*lead, self.out_features).to(out_dtype)
            xq = self.quantize_input(x2)
        if self.kernel == "triton":
            from ..runtimes.gemm8 import int8_gemm_rescale

            y = int8_gemm_rescale(xq, self.weight_int8, self.input_scale, self.weight_scale, self.bias)
        else:
            rows = xq.shape[0]
            if rows < INT_MM_MIN_ROWS and xq.is_cuda:
                xq = torch.nn.functional.pad(xq, (0, 0, 0, INT_MM_MIN_ROWS - rows))
            acc = torch._int_mm(xq, self.weight_int8.t())[:rows]
            y = (acc.float() * (self.input_scale * self.weight_scale) + self.bias.float()).to(self.out_dtype)
        return y.reshape(*lead, self.out_features).to(out_dtype)

    def quantize_input(self, x2: torch.Tensor) -> torch.Tensor:
        """Formula (2)."""
        return torch.round(x2.float() / self.input_scale).clamp(-self.qmax, self.qmax).to(torch.int8)

    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight_int8, self.weight_scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


def encode(w: torch.Tensor, options: Int8StaticOptions) -> dict[str, torch.Tensor]:
    """Formula (1) of a weight W [N, K] (already multiplied by the smoothing factors, when there are any)."""
    q, s_w = absmax_int8_rows(w, float(2 ** (options.weight_bits - 1) - 1))
    return {"weight_int8": q, "weight_scale": s_w}


def _reduced(options: Int8StaticOptions, device: torch.device | None = None) -> str:
    """The runtime record's note when fbgemm runs 7-bit activation codes on this CPU (no VNNI / AMX)."""
    from ..machine import exact_int8_products

    fbgemm = resolved_kernel(options, device or runtime_device()) == "fbgemm"
    return "; 7-bit activation codes on this CPU: no VNNI, int16 pair sums would saturate" if fbgemm and not exact_int8_products() else ""


def _kernel(options: Int8StaticOptions, device: torch.device | None = None) -> str:
    device = device or runtime_device()
    if resolved_kernel(options, device) == "triton":
        return "Triton int8 GEMM, rescale + bias fused"
    if resolved_kernel(options, device) == "fbgemm":
        return "fbgemm static u8 x s8 int8 GEMM, rescale + bias in its float32 output"
    return "torch._int_mm + float rescale" + (" (oneDNN int8 GEMM on the CPU)" if device.type == "cpu" else "")


CODEC = w8a8.Codec("int8", WEIGHTS_FILE, 127.0, encode, Int8StaticLinear, _kernel)


def calibrate(model: nn.Module, names: list[str], batches: list[dict], device: torch.device,
              options: Int8StaticOptions) -> dict[str, dict]:
    """Per projection: the smoothing factors s of formula (0) (or None) and the range a of formula (2), from the
    calibration batches' real tokens."""
    channel = {n: None for n in names}

    def channel_max(name: str, x: torch.Tensor) -> None:
        m = x.abs().amax(dim=0)
        channel[name] = m if channel[name] is None else torch.maximum(channel[name], m)

    w8a8.input_stats(model, names, batches, device, channel_max)
    out = {}
    for name in names:
        w = model.get_submodule(name).weight.detach().float()
        smooth = None
        if options.smoothquant is not None:
            alpha = options.smoothquant
            smooth = (channel[name].clamp_min(1e-5) ** alpha / w.abs().amax(dim=0).clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)
        out[name] = {"smooth": smooth, "absmax": float((channel[name] / (smooth if smooth is not None else 1.0)).max())}
    if options.range == "percentile":
        found: dict[str, list[float]] = {n: [] for n in names}

        def percentile(name: str, x: torch.Tensor) -> None:
            smooth = out[name]["smooth"]
            flat = (x / smooth if smooth is not None else x).abs().flatten()
            k = max(1, min(flat.numel(), int(math.ceil(options.percentile / 100 * flat.numel()))))
            found[name].append(float(flat.kthvalue(k).values))

        w8a8.input_stats(model, names, batches, device, percentile)
        for name in names:
            out[name]["range"] = float(np.mean(found[name]))
    else:
        for name in names:
            out[name]["range"] = out[name]["absmax"]
    return out


def build_layer(module: nn.Module, stats: dict, options: Int8StaticOptions, device: torch.device) -> Int8StaticLinear:
    """The Int8StaticLinear of formulas (0)-(3) for a float projection and its calibration statistics."""
    k, n = structure.in_out_features(module)
    w = module.weight.detach().float()
    if stats["smooth"] is not None:
        w = w * stats["smooth"][None, :]
    layer = Int8StaticLinear(k, n, options, device)
    with torch.no_grad():
        for key, value in encode(w, options).items():
            getattr(layer, key).copy_(value)
        layer.input_scale.fill_(max(stats["range"], 1e-12) / layer.qmax)
        layer.bias.copy_(module.bias.detach() if module.bias is not None else torch.zeros(n))
        if stats["smooth"] is not None:
            layer.input_smooth.copy_(1.0 / stats["smooth"])
    return layer.to(device)


def quantize(src_dir: Path, out_dir: Path, options: Int8StaticOptions, calibration: Calibration) -> dict:
    """Calibrate (0)-(2) on the validation rows, optionally score every projection and search the budget, write
    the artifact (the quantized projections' codes and scales, everything else in `dtype`)."""
    from .. import sensitivity as sens
    from .common import load_finetuned

    device = runtime_device()
    model = load_finetuned(src_dir).to(device)
    n_parameters = model.num_parameters()
    structure.conv1d_to_linear(model)
    found = structure.of(model)
    chosen = [n for n in found.projections if not any(k in n for k in options.keep_bf16)]
    batches = calibration.batches(options.calibration_rows, options.calibration_batch_size)
    stats = calibrate(model, chosen, batches, device, options)
    originals = {n: model.get_submodule(n) for n in chosen}
    make = lambda name: build_layer(originals[name], stats[name], options, device)  # noqa: E731
    w8 = dataclasses.replace(options, activation_bits=8, weight_bits=8)
    make8 = lambda name: build_layer(originals[name], stats[name], w8, device)  # noqa: E731
    ladder = options.budget == "auto" and options.budget_fallback == "w8a8" and (options.activation_bits, options.weight_bits) != (8, 8)
    own = f"W{options.weight_bits}A{options.activation_bits}"
    info: dict = {}
    quantized, fallback = list(chosen), []
    if options.sensitivity or options.budget == "auto":
        started = time.perf_counter()
        rows, labels = calibration.scoring_batches(options.sensitivity_rows)
        table = sens.per_projection(model, chosen, make, [_to(b, device) for b in rows], labels.to(device))
        info["sensitivity"] = {"rows": int(labels.numel()), "source": calibration.source, "by_projection": table}
        if options.budget == "auto":
            ranked = sorted(chosen, key=lambda n: -table[n]["kl"])
            every, every_labels = calibration.scoring_batches(len(calibration.rows))
            search = sens.budget_search(model, ranked, make, [_to(b, device) for b in every], every_labels.to(device),
                                        options.max_drop, options.budget_confidence, fallback=make8 if ladder else None,
                                        names=(own, "W8A8"))
            info["budget"] = {**search, "seconds": round(time.perf_counter() - started, 1)}  # ranking + search
            quantized = [n for n in chosen if n not in search["kept"]]
            fallback = search["fallback"]
    macs = sens.macs(model, found.projections)
    layers = {name: make(name).state_dict() for name in quantized} | {name: make8(name).state_dict() for name in fallback}
    w8a8.save_artifact(model, layers, src_dir, out_dir, options, CODEC)
    int8 = quantized + fallback
    formats = {}
    for fmt, members in ((own, quantized), ("W8A8", fallback if own != "W8A8" else []),
                         ("float", [n for n in found.projections if n not in int8])):
        if members:
            formats[fmt] = {"projections": len(members), "mac_share": round(sum(macs[n] for n in members) / sum(macs.values()), 6),
                            "weight_bytes": sum(macs[n] * (1 if fmt != "float" else 4) for n in members)}  # K N weights
    dtype = w8a8.rest_dtype(options)
    bits = f"int{options.weight_bits} weights x int{options.activation_bits} activations"
    how = "static calibrated per-tensor scales" + (f", SmoothQuant alpha {options.smoothquant}" if options.smoothquant is not None
                                                   else "") + (f", {options.percentile}th percentile ranges" if options.range == "percentile" else "")
    kept = [n for n in found.projections if n not in int8]
    also = f", int8 weights x int8 activations in {len(fallback)} (the budget's W8A8 fallback)" if fallback else ""
    return {
        "runtime_dtype": f"{bits} ({how}) in {len(quantized)} of {len(found.projections)} projections{also} "
                         f"({_kernel(options, device)}{_reduced(options, device)}); {str(dtype).replace('torch.', '')} elsewhere",
        "input_absmax": dict(sorted(((n, round(stats[n]["absmax"], 4)) for n in chosen), key=lambda kv: -kv[1])),
        "quantized_modules": len(int8),
        "kept_bf16": kept,
        "kept_full_precision": list(found.head),
        "mac_share_8bit": round(sum(macs[n] for n in int8) / sum(macs.values()), 6),
        "formats": formats,
        "calibration": {"rows": sum(len(b["input_ids"]) for b in batches), "source": calibration.source,
                        "range": options.range},
        "n_parameters": n_parameters,
        **info,
    }


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def load(artifact_dir: Path, options: Int8StaticOptions, device: torch.device) -> nn.Module:
    return w8a8.load(artifact_dir, options, device, CODEC)


SCHEME = Scheme("int8_static", Int8StaticOptions, quantize, load,
                "W8A8 int8 with calibrated per-tensor activation scales; int8 GEMM (Triton with the rescale fused on CUDA, "
                "fbgemm on a CPU)",
                available=available, calibrates=True)
