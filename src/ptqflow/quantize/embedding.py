"""Quantized embedding tables, kept quantized in memory: the `embeddings` option of the schemes.

GPT-2's token embedding (50257 x n_embd) is 31% of GPT-2 small's parameters and 94% of the default small
model's; bitsandbytes leaves it in full precision, which caps the whole model's compression. With
`embeddings: int8` or `int4` a scheme stores every embedding table of the body that structure.py finds (the
input table, and the learned position and token-type tables where the architecture has them: GPT-2 `wte`,
`wpe`; BERT word, position, token type; Llama only `embed_tokens`) with this module and looks rows up
without ever materializing the float table (only the gathered rows are dequantized).

int8, symmetric per row r of the table E (one scale per token or position):

    s[r] = max_i |E[r, i]| / 127,   q[r, i] = round(E[r, i] / s[r]) in [-127, 127],   E_deq = q * s     (1)

int4 / int3 / int2 (b bits), symmetric per group of G = 32 consecutive values of a row (g indexes the groups
of row r), with Q = 2^(b-1) - 1 (7, 3, 1):

    s[r, g] = max_{i in g} |E[r, i]| / Q,  q = round(E / s) in [-Q, Q],  stored as q + 2^(b-1) in b bits,   (2)
    packed as one little-endian bit stream per row (value i in bits [b i, b i + b): for int4 the low nibble
    is the even column); the scales are stored as float16 and q is computed with the float16-rounded scale,
    so the bound below holds for the stored scale.

Both give |E - E_deq| <= s / 2 elementwise. An all-zero row or group gets s = 1 (q = 0, exact).

int4-mse / int3-mse / int2-mse (b bits), asymmetric per group of G = 64 values, with the range clipped to the
shrink factor c (of the grid 0.5, 0.55, ..., 1.0) that minimises the group's squared error, Q = 2^b - 1:

    lo = c min_{i in g} E[r, i],  hi = c max_{i in g} E[r, i],  s = (hi - lo) / Q,  z = round(-lo / s),            (3)
    q = clamp(round(E / s) + z, 0, Q),  E_deq = s (q - z),   c = argmin_c sum_{i in g} (E[r, i] - E_deq[r, i])^2

(s float16, z uint8, codes packed as for (2)); a low-bit table spends its few levels where a group's values are,
not on a symmetric range around one outlier. Bits per value: int8 8 + 32 / n_embd; int{b} b + 16 / 32 (int4 4.5,
int3 3.5, int2 2.5); int{b}-mse b + 24 / 64 (4.375, 3.375, 2.375).

`embeddings: auto` picks the fewest bits per value of the modes above whose validation accuracy drop fits the
budget (sensitivity.smallest_fitting): the size search.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .. import structure
from .common import absmax_int8_rows

GROUP = 32  # int4 / int3 / int2: values per scale
MSE_GROUP = 64  # int{b}-mse: values per scale and zero point
SHRINK = [0.5 + 0.05 * i for i in range(11)]  # int{b}-mse: range shrink factors tried
EmbeddingMode = Literal["keep", "int8", "int4", "int3", "int2", "int4-mse", "int3-mse", "int2-mse"]
GROUPED = {"int4": 4, "int3": 3, "int2": 2, "int4-mse": 4, "int3-mse": 3, "int2-mse": 2}  # mode -> bits per code
MSE = ("int4-mse", "int3-mse", "int2-mse")


def search_ladder(widths: list[int]) -> list[str]:
    """The size search's embedding candidates, fewest bits per value first: the MSE-clipped modes where every table's
    width is a multiple of their group, else the symmetric ones; int8 last."""
    if all(w % MSE_GROUP == 0 for w in widths):
        return ["int2-mse", "int3-mse", "int4-mse", "int8"]
    return ["int2", "int3", "int4", "int8"]


def bits_per_value(mode: str, dim: int) -> float:
    """Stored bits per table value of `mode` (for a table `dim` wide)."""
    if mode == "int8":
        return 8 + 32 / dim
    return GROUPED[mode] + (24 / MSE_GROUP if mode in MSE else 16 / GROUP)


def quantize_rows_int8(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (int8, shape of table) and the per-row scale (float32, [rows]) by formula (1)."""
    return absmax_int8_rows(table)


def quantize_groups(table: torch.Tensor, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed codes (uint8, [rows, dim * bits / 8]) and per-group scales (float16, [rows, dim / G]) by formula (2)."""
    rows, dim = table.shape
    if dim % GROUP:
        raise ValueError(f"int{bits} embeddings need the embedding width to be a multiple of {GROUP}, got {dim}")
    qmax = 2 ** (bits - 1) - 1
    t = table.detach().to(torch.float32).reshape(rows, dim // GROUP, GROUP)
    scale = (t.abs().amax(dim=2) / qmax).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(t / scale.to(torch.float32)[..., None]), -qmax, qmax).to(torch.int16) + qmax + 1
    return pack(q.reshape(rows, dim), bits), scale


def quantize_groups_mse(table: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed codes (uint8), scales (float16) and zero points (uint8), [rows, dim / 64] each, by formula (3): lowbit.py's
    group-wise asymmetric round-to-nearest of the shrunk range, the shrink with the least squared error per group."""
    from .lowbit import dequantize, rtn

    rows, dim = table.shape
    if dim % MSE_GROUP:
        raise ValueError(f"int{bits}-mse embeddings need the embedding width to be a multiple of {MSE_GROUP}, got {dim}")
    t = table.detach().to(torch.float32)
    best = None
    for c in SHRINK:
        q, s, z = rtn(t, bits, MSE_GROUP, c)
        err = ((dequantize(q, s, z, MSE_GROUP) - t) ** 2).reshape(rows, -1, MSE_GROUP).sum(dim=2)
        if best is None:
            best = [err, q, s, z]
        else:
            better = err < best[0]
            best = [torch.where(better, err, best[0]), torch.where(better.repeat_interleave(MSE_GROUP, dim=1), q, best[1]),
                    torch.where(better, s, best[2]), torch.where(better, z, best[3])]
    _, q, s, z = best
    return pack(q.to(torch.int16), bits), s.to(torch.float16), z.to(torch.uint8)


def quantize_groups_int4(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_groups(table, 4)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in [0, 2^bits) of each row as one little-endian bit stream of bytes ([rows, cols * bits / 8])."""
    rows, cols = codes.shape
    shifts = torch.arange(bits, device=codes.device)
    stream = ((codes.to(torch.int32)[..., None] >> shifts) & 1).reshape(rows, cols * bits // 8, 8)
    return (stream << torch.arange(8, device=codes.device)).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The signed codes q in [-Q, Q] (int8, [rows, packed cols * 8 / bits]) of a `pack`ed stream."""
    rows = packed.shape[0]
    stream = ((packed.to(torch.int32)[..., None] >> torch.arange(8, device=packed.device)) & 1).reshape(rows, -1, bits)
    codes = (stream << torch.arange(bits, device=packed.device)).sum(-1)
    return (codes - 2 ** (bits - 1)).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    return unpack(packed, 4)


class QuantizedEmbedding(nn.Module):
    """An `nn.Embedding` lookup over an int8 (per row) or int4 / int3 / int2 (per group) table; rows dequantized on lookup."""

    ptqflow_embedding = True  # structure.py counts it as an embedding table

    def __init__(self, mode: str, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, zero: torch.Tensor | None = None):
        super().__init__()
        self.mode, self.dtype = mode, dtype
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        if mode in MSE:
            self.register_buffer("zero", zero)
        self.num_embeddings = codes.shape[0]
        self.embedding_dim = codes.shape[1] * 8 // GROUPED[mode] if mode in GROUPED else codes.shape[1]

    @classmethod
    def from_float(cls, table: torch.Tensor, mode: str, dtype: torch.dtype) -> "QuantizedEmbedding":
        if mode in MSE:
            codes, scale, zero = quantize_groups_mse(table, GROUPED[mode])
            return cls(mode, codes, scale, dtype, zero)
        codes, scale = quantize_rows_int8(table) if mode == "int8" else quantize_groups(table, GROUPED[mode])
        return cls(mode, codes, scale, dtype)

    def dequantize_rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "int8":
            return self.codes[ids].to(self.dtype) * self.scale[ids].to(self.dtype)[..., None]
        bits = GROUPED[self.mode]
        q = unpack(self.codes[ids.reshape(-1)], bits).reshape(*ids.shape, self.embedding_dim)
        if self.mode in MSE:  # formula (3): unpack gives q - 2^(b-1)
            z = self.zero[ids].to(self.dtype).repeat_interleave(MSE_GROUP, dim=-1) - 2 ** (bits - 1)
            return (q.to(self.dtype) - z) * self.scale[ids].to(self.dtype).repeat_interleave(MSE_GROUP, dim=-1)
        s = self.scale[ids].to(self.dtype).repeat_interleave(GROUP, dim=-1)
        return q.to(self.dtype) * s

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dequantize_rows(ids)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (for inspection and tests; the forward pass never builds it)."""
        return self.dequantize_rows(torch.arange(self.num_embeddings, device=self.codes.device))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode}, dtype={self.dtype}"


def embedding_names(model: nn.Module) -> list[str]:
    """The body's embedding tables (structure.py), in module order."""
    return list(structure.of(model).embeddings)


def quantize_embeddings(model: nn.Module, mode: EmbeddingMode, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Replace every embedding table of `model` by QuantizedEmbedding (mode int8 / int4 / int3 / int2); returns their
    stored tensors."""
    out: dict[str, torch.Tensor] = {}
    if mode == "keep":
        return out
    for name in embedding_names(model):
        table = model.get_submodule(name).weight
        group = MSE_GROUP if mode in MSE else GROUP
        if mode in GROUPED and table.shape[1] % group:
            from ..errors import PtqflowError

            raise PtqflowError(f"embeddings: {mode} needs embedding widths that are a multiple of {group}; {name} is {table.shape[1]} wide")
        q = QuantizedEmbedding.from_float(table, mode, dtype)
        structure.replace_module(model, name, q)
        out[f"{name}.codes"], out[f"{name}.scale"] = q.codes.contiguous(), q.scale.contiguous()
        if mode in MSE:
            out[f"{name}.zero"] = q.zero.contiguous()
    return out


def attach_embeddings(model: nn.Module, mode: EmbeddingMode, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> int:
    """Put the stored quantized embeddings (from `quantize_embeddings`) into `model`; returns how many."""
    if mode == "keep":
        return 0
    names = embedding_names(model)
    for name in names:
        structure.replace_module(model, name, QuantizedEmbedding(mode, tensors[f"{name}.codes"], tensors[f"{name}.scale"], dtype,
                                                                 tensors.get(f"{name}.zero")))
    return len(names)


def split_embedding_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the quantized-embedding tensors written by `quantize_embeddings`, everything else)."""
    def stored(key: str) -> bool:
        return key.endswith((".codes", ".scale", ".zero")) and "::" not in key
    return {k: v for k, v in tensors.items() if stored(k)}, {k: v for k, v in tensors.items() if not stored(k)}


def count_quantized_embeddings(model: nn.Module) -> int:
    return sum(isinstance(m, QuantizedEmbedding) for m in model.modules())


def describe(mode: EmbeddingMode) -> str:
    if mode in MSE:
        return f"embeddings {mode} (asymmetric, MSE-clipped) per {MSE_GROUP} values"
    return "embeddings kept" if mode == "keep" else "embeddings int8 per row" if mode == "int8" else f"embeddings {mode} per {GROUP} values"
