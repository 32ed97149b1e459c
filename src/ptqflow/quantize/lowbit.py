"""`lowbit`: weight-only b-bit projections (b = 2..8), group-wise asymmetric, by round-to-nearest (RTN), GPTQ
(Frantar et al. 2022) or AWQ (Lin et al. 2023), stored bit-packed; dequantized to `dtype` once at load, so the
products run in float (a size win: on disk b + 24 / G bits per weight; not a compute or memory win).

Per projection W [N out, K in], input columns in groups of G = `group_size` (g indexes a row's groups), Q = 2^b - 1:

    s[j, g] = (max_{k in g} W[j, k] - min_{k in g} W[j, k]) / Q   (1 if the group is constant)
    z[j, g] = clamp(round(-min_{k in g} W[j, k] / s[j, g]), 0, Q)                                        (1)
    q[j, k] = clamp(round(W[j, k] / s[j, g]) + z[j, g], 0, Q),     deq(q)[j, k] = s[j, g] (q[j, k] - z[j, g])   (2)

so |W - deq(q)| <= s / 2 inside the group's range (plus Q times the float16 rounding of s at the far end). Stored: q packed b bits per value (one little-endian stream per
row, embedding.pack), s as float16 (q computed with the rounded s), z as uint8.

- `rtn`: (1)-(2) on W.
- `gptq`: with H = (2 / T) sum_t x_t x_t^T over the calibration tokens x_t (the projection's inputs on real tokens
  of `calibration_rows` validation rows, from the float model in one pass), H += damp * mean(diag H) I, and
  U = the upper Cholesky factor of H^-1, columns are quantized in order; after column k, its error
  e = (W[:, k] - deq(q[:, k])) / U[k, k] is spread onto the columns not yet quantized, W[:, k'] -= e U[k, k']
  (k' > k; blocks of `block_size` columns, the lazy batch update of the paper). A group's (1) is computed from the
  updated weights when its first column is reached. This minimises ||X W^T - X deq(Q)^T||^2 column by column.
- `awq`: a per-input-channel scale c_k = a_k^alpha / (prod_k a_k^alpha)^(1/K), a_k = mean_t |x_tk|, with alpha on a grid
  of `awq_grid` points in [0, 1] chosen to minimise ||X W^T - (X diag(1/c)) deq(Q(W diag(c)))^T||^2 on the calibration
  tokens; stored: the codes of W diag(c) and 1/c (float16), deq = deq(q) diag(1/c): what folding 1/c into the
  operation that produces X does, exactly.

`embeddings: auto` takes the fewest bits of embedding.search_ladder (int2-mse, int3-mse, int4-mse, int8) for the
tables whose validation drop fits the budget, first (they hold the most bytes for the accuracy they cost). `bits:
auto` is then the size search over the projections, with those tables in place: with `max_drop` (null:
report.max_accuracy_drop) and the one-sided `budget_confidence` bound of the validation drop against the float
model (sensitivity.py), a ladder of formats per projection (2 -> 3 -> 4 -> 8 bits, then float), the most sensitive
projections raised first; run with `method` and with `rtn`, the smaller fitting model kept, both recorded (what the
calibrated method buys).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn

from .. import structure
from ..calibration import Calibration
from ..config import check
from ..errors import PtqflowError
from .embedding import EmbeddingMode, attach_embeddings, count_quantized_embeddings, describe, pack, quantize_embeddings, unpack
from .registry import Scheme

WEIGHTS_FILE = "model.lowbit.safetensors"
LADDER = (2, 3, 4, 8)  # bits per weight the size search tries, then float


@dataclass
class LowBitOptions:
    bits: int | Literal["auto"] = 4  # bits per weight of every projection; auto: the size search (module docstring)
    group_size: int = 128  # input columns per scale and zero point (a divisor of every projection's input width)
    method: Literal["rtn", "gptq", "awq"] = "gptq"  # how the codes are chosen (module docstring)
    calibration_rows: int = 128  # gptq / awq: validation rows whose projection inputs are the calibration tokens
    calibration_batch_size: int = 16
    damp: float = 0.01  # gptq: fraction of mean(diag H) added to H's diagonal
    block_size: int = 128  # gptq: columns per lazy batch update
    awq_grid: int = 20  # awq: alphas tried in [0, 1]
    dtype: Literal["float32", "bfloat16"] = "float32"  # what the dequantized weights and everything else run in
    embeddings: EmbeddingMode | Literal["auto"] = "keep"  # the embedding tables (embedding.py); auto: fewest bits that fit
    max_drop: float | None = None  # bits / embeddings auto: validation accuracy drop allowed; null: report.max_accuracy_drop
    budget_confidence: float = 0.95  # the drop's one-sided bootstrap bound that must fit
    sensitivity_rows: int = 256  # bits auto: validation rows the projections are ranked on (KL at the lowest rung)

    def budgeted(self) -> bool:
        return self.bits == "auto" or self.embeddings == "auto"

    def __post_init__(self) -> None:
        check(self.bits == "auto" or 2 <= self.bits <= 8, "bits", "an integer in 2..8 or auto", self.bits)
        check(self.group_size >= 8 and self.group_size % 8 == 0, "group_size", "a multiple of 8", self.group_size)
        check(self.calibration_rows >= 1, "calibration_rows", "a positive integer", self.calibration_rows)
        check(self.calibration_batch_size >= 1, "calibration_batch_size", "a positive integer", self.calibration_batch_size)
        check(0.0 <= self.damp < 1.0, "damp", "a fraction in [0, 1)", self.damp)
        check(self.block_size >= 1, "block_size", "a positive integer", self.block_size)
        check(self.awq_grid >= 2, "awq_grid", "an integer >= 2", self.awq_grid)
        check(self.max_drop is None or 0.0 <= self.max_drop < 1.0, "max_drop", "a fraction in [0, 1) or null", self.max_drop)
        check(0.5 <= self.budget_confidence < 1.0, "budget_confidence", "a level in [0.5, 1)", self.budget_confidence)


# --------------------------------------------------------------------------------------------- formulas (1)-(2)
def group_params(w: torch.Tensor, bits: int, shrink: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, z) of formula (1) over the last dimension of w (one group: [N, G], or every group: [N, K/G, G]); s already
    float16-rounded. `shrink` < 1 clips the range to [shrink min, shrink max] (embedding.py formula (3))."""
    qmax = 2**bits - 1
    lo, hi = w.amin(dim=-1).clamp(max=0.0), w.amax(dim=-1).clamp(min=0.0)  # the range holds 0: z is a code
    s = ((hi - lo) * shrink / qmax).to(torch.float16).to(torch.float32)
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.clamp(torch.round(-lo * shrink / s), 0, qmax)
    return s, z


def quantize_codes(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int) -> torch.Tensor:
    """q of formula (2) for w [N, C] with per-row s, z ([N] or [N, 1])."""
    s, z = s.reshape(-1, 1), z.reshape(-1, 1)
    return torch.clamp(torch.round(w / s) + z, 0, 2**bits - 1)


def dequantize_codes(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return s.reshape(-1, 1) * (q - z.reshape(-1, 1))


def _groups(k: int, group_size: int, name: str) -> int:
    g = min(group_size, k)
    if k % g:
        raise PtqflowError(f"lowbit: group_size {group_size} does not divide the input width {k} of {name}")
    return g


def rtn(w: torch.Tensor, bits: int, group: int, shrink: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [N, K], s [N, K/G], z [N, K/G]) by (1)-(2) group by group; (1) of the group's range times `shrink` (the
    clipped ranges of embedding.py's MSE modes; 1: the whole range)."""
    n, k = w.shape
    wg = w.reshape(n, k // group, group)
    s, z = group_params(wg, bits, shrink)
    q = torch.clamp(torch.round(wg / s[..., None]) + z[..., None], 0, 2**bits - 1)
    return q.reshape(n, k), s, z


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int, group: int, damp: float, block_size: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, s, z) by GPTQ (module docstring) from w [N, K] and H [K, K] (float64 accumulated)."""
    w = w.clone().to(torch.float32)
    n, k = w.shape
    h = hessian.clone().to(torch.float64)
    dead = torch.diag(h) == 0  # a column no calibration token used: its weight never matters there
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype)
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)
    except RuntimeError:  # not positive definite even damped: a larger damp, once
        h += 0.1 * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype)
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)
    q = torch.zeros_like(w)
    s_all = torch.zeros(n, k // group)
    z_all = torch.zeros(n, k // group)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:  # a group starts: (1) from the weights as updated so far
                s, z = group_params(torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :group], bits)
                s_all[:, col // group], z_all[:, col // group] = s, z
            s, z = s_all[:, col // group], z_all[:, col // group]
            qc = quantize_codes(w1[:, i : i + 1], s, z, bits)
            q[:, col] = qc[:, 0]
            e = (w1[:, i] - dequantize_codes(qc, s, z)[:, 0]) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return q, s_all, z_all


def dequantize(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group: int) -> torch.Tensor:
    """W_deq [N, K] of (2) from q [N, K] and per-group s, z [N, K/G]."""
    n, k = q.shape
    return ((q.reshape(n, k // group, group) - z[..., None]) * s[..., None]).reshape(n, k)


def awq_scale(w: torch.Tensor, x: torch.Tensor, bits: int, group: int, grid: int) -> tuple[torch.Tensor, float]:
    """(c [K], alpha) of AWQ (module docstring) from w [N, K] and calibration inputs x [T, K]."""
    a = x.abs().mean(dim=0).clamp_min(1e-8)
    reference = x @ w.t()
    best, best_alpha, best_c = math.inf, 0.0, torch.ones_like(a)
    for step in range(grid):
        alpha = step / (grid - 1)
        c = a**alpha
        c = c / torch.exp(torch.log(c).mean())
        q, s, z = rtn(w * c[None, :], bits, group)
        out = (x / c[None, :]) @ dequantize(q, s, z, group).t()
        loss = float(((out - reference) ** 2).mean())
        if loss < best:
            best, best_alpha, best_c = loss, alpha, c
    return best_c, best_alpha


# --------------------------------------------------------------------------------------------- calibration
def collect(model: nn.Module, names: list[str], batches: list[dict], device: torch.device, need_x: bool,
            max_tokens: int = 4096) -> dict[str, dict]:
    """Per projection: H = (2 / T) sum_t x_t x_t^T (float64) and, for awq, up to `max_tokens` input rows x_t."""
    from .w8a8 import input_stats

    found = {n: {"h": None, "t": 0, "x": []} for n in names}

    def stat(name: str, x: torch.Tensor) -> None:
        rec = found[name]
        xd = x.to(torch.float64)
        rec["h"] = (xd.t() @ xd) if rec["h"] is None else rec["h"] + xd.t() @ xd
        rec["t"] += x.shape[0]
        if need_x and sum(len(v) for v in rec["x"]) < max_tokens:
            rec["x"].append(x.cpu())

    input_stats(model, names, batches, device, stat)
    return {n: {"h": (2.0 / max(r["t"], 1)) * r["h"].cpu(), "x": torch.cat(r["x"])[:max_tokens] if r["x"] else None}
            for n, r in found.items()}


def encode(w: torch.Tensor, bits: int, group: int, method: str, stats: dict | None, options: LowBitOptions) -> dict:
    """The stored tensors of one projection at `bits` by `method` (stats: collect()'s entry)."""
    inv = None
    if method == "awq":
        c, _alpha = awq_scale(w, stats["x"].float(), bits, group, options.awq_grid)
        w = w * c[None, :]
        inv = (1.0 / c).to(torch.float16)
        q, s, z = rtn(w, bits, group)
    elif method == "gptq":
        q, s, z = gptq(w, stats["h"], bits, group, options.damp, options.block_size)
    else:
        q, s, z = rtn(w, bits, group)
    out = {"qweight": pack(q.to(torch.int16), bits), "qscale": s.to(torch.float16), "qzero": z.to(torch.uint8)}
    if inv is not None:
        out["awq_inv_scale"] = inv
    return out


def decode(tensors: dict[str, torch.Tensor], bits: int, shape: tuple[int, int]) -> torch.Tensor:
    """W_deq [N, K] (float32) of stored tensors (encode's)."""
    n, k = shape
    q = unpack(tensors["qweight"], bits).to(torch.float32) + 2 ** (bits - 1)  # embedding.unpack gives q - 2^(b-1)
    group = k // tensors["qscale"].shape[1]
    w = dequantize(q, tensors["qscale"].float(), tensors["qzero"].float(), group)
    if "awq_inv_scale" in tensors:
        w = w * tensors["awq_inv_scale"].float()[None, :]
    return w


def stored_bits(bits: int, group: int) -> float:
    """Bits on disk per weight: b for the code, 16 (s) + 8 (z) per group."""
    return bits + 24 / group


class _Dequantized(nn.Linear):
    """A projection whose weight is a dequantized low-bit code (for the searches; the artifact loads into nn.Linear)."""


def _layer(module: nn.Module, w_deq: torch.Tensor) -> nn.Linear:
    k, n = structure.in_out_features(module)
    layer = _Dequantized(k, n, bias=module.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w_deq)
        if module.bias is not None:
            layer.bias.copy_(module.bias.detach().float())
    return layer.to(module.weight.device)


# --------------------------------------------------------------------------------------------- the scheme
def quantize(src_dir: Path, out_dir: Path, options: LowBitOptions, calibration: Calibration | None = None) -> dict:
    """Encode every body projection (or search the bits per projection), optionally the embeddings, write the artifact."""
    from .common import load_finetuned, runtime_device

    device = runtime_device()
    model = load_finetuned(src_dir).to(device)
    n_parameters = model.num_parameters()
    structure.conv1d_to_linear(model)
    found = structure.of(model)
    names = list(found.projections)
    groups = {n: _groups(structure.in_out_features(model.get_submodule(n))[0], options.group_size, n) for n in names}
    weights = {n: model.get_submodule(n).weight.detach().float().cpu() for n in names}
    needs_data = options.method in ("gptq", "awq") or options.budgeted()
    if needs_data and calibration is None:
        raise PtqflowError("lowbit: this variant calibrates on validation rows; give it the prepared data")
    started = time.perf_counter()
    stats = (collect(model, names, calibration.batches(options.calibration_rows, options.calibration_batch_size), device,
                     need_x=options.method == "awq" or options.bits == "auto")
             if options.method in ("gptq", "awq") else {n: None for n in names})
    cache: dict[tuple, dict] = {}

    def encoded(name: str, bits: int, method: str) -> dict:
        if (name, bits, method) not in cache:
            cache[(name, bits, method)] = encode(weights[name], bits, groups[name], method, stats[name], options)
        return cache[(name, bits, method)]

    info: dict = {}
    scoring = _scoring(calibration, device) if options.budgeted() else None
    embeddings = options.embeddings
    fixed = {n: (None if options.bits == "auto" else options.bits, options.method) for n in names}  # None: float, for now
    if embeddings == "auto":  # first: the tables hold the most bytes per point of accuracy they cost
        embeddings, info["embedding_search"] = _embedding_search(model, fixed, encoded, weights, scoring, options)
    if options.bits == "auto":
        chosen, info["size_search"] = _size_search(model, names, encoded, weights, scoring, options, embeddings)
    else:
        chosen = fixed
    tensors: dict[str, torch.Tensor] = {}
    for name, (bits, method) in chosen.items():
        if bits is None:  # kept in float by the search
            continue
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in encoded(name, bits, method).items()})
        bias = model.get_submodule(name).bias
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().to(getattr(torch, options.dtype)).cpu().contiguous()
        structure.replace_module(model, name, nn.Identity())
    dtype = getattr(torch, options.dtype)
    model = model.to("cpu").to(dtype)
    tensors.update({k: v for k, v in quantize_embeddings(model, embeddings, dtype).items()})
    tensors.update({k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if k not in tensors})
    layers = {n: f"{b}:{m}:{weights[n].shape[0]}:{weights[n].shape[1]}" for n, (b, m) in chosen.items() if b is not None}
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"lowbit_layers": ";".join(f"{n}={v}" for n, v in layers.items()),
                                                               "embeddings": embeddings})
    import shutil

    shutil.copy(src_dir / "config.json", out_dir / "config.json")
    by_format: dict[str, dict] = {}
    for n in names:
        bits, method = chosen[n]
        key = f"int{bits} {method}" if bits is not None else "float"
        rec = by_format.setdefault(key, {"projections": 0, "weights": 0, "bytes": 0})
        rec["projections"] += 1
        rec["weights"] += weights[n].numel()
        rec["bytes"] += int(weights[n].numel() * (stored_bits(bits, groups[n]) / 8 if bits is not None else 4))
    quantized = sum(1 for b, _ in chosen.values() if b is not None)
    formats = ", ".join(f"{k} in {v['projections']}" for k, v in by_format.items())
    return {
        "runtime_dtype": f"{options.dtype} compute: weights stored {formats} of {len(names)} projections (group {options.group_size}, "
                         f"asymmetric), dequantized to {options.dtype} once at load; {describe(embeddings)}",
        "quantized_modules": quantized,
        "quantized_embeddings": len(found.embeddings) if embeddings != "keep" else 0,
        "embeddings": embeddings,
        "formats": by_format,
        "bits_per_weight": {k: round(stored_bits(int(k.split()[0][3:]), options.group_size), 4) for k in by_format if k != "float"},
        "kept_full_precision": list(found.head),
        "calibration": ({"rows": min(options.calibration_rows, len(calibration.rows)), "source": calibration.source}
                        if calibration is not None and needs_data else None),
        "quantize_seconds": round(time.perf_counter() - started, 1),
        "n_parameters": n_parameters,
        **info,
    }


def _scoring(calibration: Calibration, device: torch.device) -> tuple[list[dict], torch.Tensor]:
    """The whole validation split as the searches score it (longest first, labels in that order)."""
    batches, labels = calibration.scoring_batches(len(calibration.rows))
    return [{k: v.to(device) for k, v in b.items()} for b in batches], labels.to(device)


def calibration_rows(scoring: tuple[list[dict], torch.Tensor], n: int) -> tuple[list[dict], torch.Tensor]:
    """The first batches of the scoring split holding about `n` rows (what the sensitivity ranking scores on)."""
    batches, labels = scoring
    out, rows = [], 0
    for b in batches:
        if rows >= n:
            break
        out.append(b)
        rows += len(b["input_ids"])
    return out, labels[:rows]


def _builder(model: nn.Module, names: list[str], encoded, weights: dict, bits: int, method: str):
    """name -> the float layer holding that projection's weights as decoded from `bits` by `method`."""
    originals = {n: model.get_submodule(n) for n in names}
    return lambda name: _layer(originals[name], decode(encoded(name, bits, method), bits, tuple(weights[name].shape)))


def _size_search(model, names, encoded, weights, scoring, options, embeddings: str = "keep") -> tuple[dict, dict]:
    """The ladder search of the module docstring, with `options.method` and with rtn: the smaller fitting model; with
    the embedding tables already as `embeddings` (the drop is against the float model)."""
    from .. import sensitivity as sens
    from .embedding import embedding_names

    batches, labels = scoring
    base_right = (sens.logits_on(model, batches).argmax(-1) == labels).cpu().numpy()  # the float model
    dtype = next(model.parameters()).dtype
    tables = {n: _decoded_table(model.get_submodule(n), embeddings, dtype) for n in embedding_names(model)} if embeddings != "keep" else {}
    originals = sens.swap(model, tables)
    methods = [options.method] + (["rtn"] if options.method != "rtn" else [])
    results = {}
    try:
        for method in methods:
            results[method] = _ladder(model, names, encoded, weights, scoring, options, method, base_right)
    finally:
        sens.swap(model, originals)
    best = min(results, key=lambda m: (results[m]["projection_bits"], results[m]["validation_drop_bound"]))
    chosen = {n: ((LADDER[lvl], best) if lvl < len(LADDER) else (None, best)) for n, lvl in results[best]["levels"].items()}
    return chosen, {"method": best, "by_method": results, "ladder": [f"int{b}" for b in LADDER] + ["float"],
                    "embeddings": embeddings}


def _decoded_table(table: nn.Module, mode: str, dtype: torch.dtype) -> nn.Embedding:
    """A float table holding `mode`'s dequantized values: the same lookups as the QuantizedEmbedding, without
    unpacking codes at every lookup (the searches run hundreds of forwards)."""
    from .embedding import QuantizedEmbedding

    return nn.Embedding.from_pretrained(QuantizedEmbedding.from_float(table.weight, mode, dtype).weight, freeze=True,
                                        padding_idx=getattr(table, "padding_idx", None))


def _ladder(model, names, encoded, weights, scoring, options, method: str, base_right) -> dict:
    """One method's ladder search over the projections (sensitivity.ladder_search), its projection bits counted."""
    from .. import sensitivity as sens

    batches, labels = scoring
    rungs = [_builder(model, names, encoded, weights, b, method) for b in LADDER]
    rows, row_labels = calibration_rows(scoring, options.sensitivity_rows)
    table = sens.per_projection(model, names, rungs[0], rows, row_labels, progress=True)
    ranked = sorted(names, key=lambda n: -table[n]["kl"])  # most sensitive at the lowest rung first
    record = sens.ladder_search(model, ranked, rungs, batches, labels, options.max_drop, options.budget_confidence,
                                label=f"size search ({method})", rung_names=[f"int{b}" for b in LADDER], base_right=base_right)
    size = sum(weights[n].numel() * (stored_bits(LADDER[lvl], options.group_size) if lvl < len(LADDER) else 32)
               for n, lvl in record["levels"].items())
    return {**record, "projection_bits": int(size)}


def _embedding_search(model, chosen, encoded, weights, scoring, options) -> tuple[str, dict]:
    """The fewest bits of embedding.search_ladder (2, 3, 4 bits MSE-clipped, 8) for the embedding tables that keep the
    validation drop (against the float model) within the budget, with the projections as chosen."""
    from .. import sensitivity as sens
    from .embedding import embedding_names, search_ladder

    batches, labels = scoring
    base_right = (sens.logits_on(model, batches).argmax(-1) == labels).cpu().numpy()  # the float model
    names = [n for n, (b, _) in chosen.items() if b is not None]
    projections = {n: _builder(model, names, encoded, weights, *chosen[n])(n) for n in names}
    originals = sens.swap(model, projections)
    tables = {n: model.get_submodule(n) for n in embedding_names(model)}
    dtype = next(model.parameters()).dtype

    def right(mode: str):
        sens.swap(model, {n: _decoded_table(m, mode, dtype) for n, m in tables.items()})
        try:
            return (sens.logits_on(model, batches).argmax(-1) == labels).cpu().numpy()
        finally:
            sens.swap(model, tables)

    try:
        ladder = search_ladder([int(m.weight.shape[1]) for m in tables.values()])
        record = sens.smallest_fitting(ladder, right, base_right, options.max_drop,
                                       options.budget_confidence, label="size search (embeddings)")
    finally:
        sens.swap(model, originals)
    return record["chosen"] or "keep", record


def load(artifact_dir: Path, options: LowBitOptions, device: torch.device) -> nn.Module:
    """The artifact as a float model: every stored projection decoded into an nn.Linear (counted), the embeddings as
    stored."""
    from .common import read_weights, skeleton

    path = artifact_dir / WEIGHTS_FILE
    tensors, meta = read_weights(path)
    dtype = getattr(torch, options.dtype)
    model = skeleton(artifact_dir, dtype)
    structure.conv1d_to_linear(model)
    layers = dict(item.split("=", 1) for item in (meta.get("lowbit_layers") or "").split(";") if item)
    for name, spec in layers.items():
        bits, _method, n, k = spec.split(":")
        module = model.get_submodule(name)
        own = {part: tensors.pop(f"{name}.{part}") for part in ("qweight", "qscale", "qzero", "awq_inv_scale")
               if f"{name}.{part}" in tensors}
        with torch.no_grad():
            module.weight.copy_(decode(own, int(bits), (int(n), int(k))).to(dtype))
    embeddings = meta.get("embeddings", "keep")
    if embeddings != "keep":
        from .embedding import split_embedding_tensors

        stored, tensors = split_embedding_tensors(tensors)
        attach_embeddings(model, embeddings, stored, dtype)
    missing = [k for k in model.state_dict() if k not in tensors and not any(k.startswith(f"{n}.weight") for n in layers)
               and not k.endswith((".codes", ".scale", ".zero"))]
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise PtqflowError(f"{path}: does not match the model config ({str(exc).splitlines()[0]})") from None
    if missing:
        raise PtqflowError(f"{path}: tensors missing from the artifact: {', '.join(missing[:3])}")
    structure.expect(len(layers), len(layers), "low-bit projections", str(path))
    model.ptqflow_runtime = {"lowbit_layers": len(layers), "embeddings": embeddings,
                             "quantized_embeddings": count_quantized_embeddings(model)}
    return model.to(device)


SCHEME = Scheme("lowbit", LowBitOptions, quantize, load,
                "weight-only 2-8 bit projections by round-to-nearest, GPTQ or AWQ, bit-packed, dequantized at load",
                calibrates=lambda options: options.method in ("gptq", "awq") or options.budgeted())
