"""Quantized embedding tables, kept quantized in memory: the `embeddings` option of the schemes.

GPT-2's token embedding (50257 x n_embd) is 31% of GPT-2 small's parameters and 94% of the default small
model's; bitsandbytes leaves it in full precision, which caps the whole model's compression. With
`embeddings: int8` or `int4` a scheme stores every embedding table of the body that structure.py finds (the
input table, and the learned position and token-type tables where the architecture has them: GPT-2 `wte`,
`wpe`; BERT word, position, token type; Llama only `embed_tokens`) with this module and looks rows up
without ever materializing the float table (only the gathered rows are dequantized).

int8, symmetric per row r of the table E (one scale per token or position):

    s[r] = max_i |E[r, i]| / 127,   q[r, i] = round(E[r, i] / s[r]) in [-127, 127],   E_deq = q * s     (1)

int4, symmetric per group of G = 32 consecutive values of a row (g indexes the groups of row r):

    s[r, g] = max_{i in g} |E[r, i]| / 7,  q = round(E / s) in [-7, 7],  stored as q + 8 in 4 bits,     (2)
    two codes per byte (low nibble = even column); the scales are stored as float16 and q is computed
    with the float16-rounded scale, so the bound below holds for the stored scale.

Both give |E - E_deq| <= s / 2 elementwise. An all-zero row or group gets s = 1 (q = 0, exact).
Bits per value: int8 8 + 32 / n_embd; int4 4 + 16 / 32 = 4.5.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .. import structure
from .common import absmax_int8_rows

GROUP = 32  # int4: values per scale
EmbeddingMode = Literal["keep", "int8", "int4"]


def quantize_rows_int8(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (int8, shape of table) and the per-row scale (float32, [rows]) by formula (1)."""
    return absmax_int8_rows(table)


def quantize_groups_int4(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed codes (uint8, [rows, dim / 2]) and per-group scales (float16, [rows, dim / G]) by formula (2)."""
    rows, dim = table.shape
    if dim % GROUP:
        raise ValueError(f"int4 embeddings need the embedding width to be a multiple of {GROUP}, got {dim}")
    t = table.detach().to(torch.float32).reshape(rows, dim // GROUP, GROUP)
    scale = (t.abs().amax(dim=2) / 7.0).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(t / scale.to(torch.float32)[..., None]), -7, 7).to(torch.int16) + 8
    q = q.reshape(rows, dim).to(torch.uint8)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed, scale


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The signed codes q in [-7, 7] (int8, [rows, 2 * packed cols]) of packed nibbles."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


class QuantizedEmbedding(nn.Module):
    """An `nn.Embedding` lookup over an int8 (per row) or int4 (per group) table; rows dequantized on lookup."""

    ptqflow_embedding = True  # structure.py counts it as an embedding table

    def __init__(self, mode: Literal["int8", "int4"], codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.mode, self.dtype = mode, dtype
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.num_embeddings = codes.shape[0]
        self.embedding_dim = codes.shape[1] * (2 if mode == "int4" else 1)

    @classmethod
    def from_float(cls, table: torch.Tensor, mode: Literal["int8", "int4"], dtype: torch.dtype) -> "QuantizedEmbedding":
        codes, scale = quantize_rows_int8(table) if mode == "int8" else quantize_groups_int4(table)
        return cls(mode, codes, scale, dtype)

    def dequantize_rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "int8":
            return self.codes[ids].to(self.dtype) * self.scale[ids].to(self.dtype)[..., None]
        q = unpack_int4(self.codes[ids.reshape(-1)]).reshape(*ids.shape, self.embedding_dim)
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
    """Replace every embedding table of `model` by QuantizedEmbedding (mode int8 / int4); returns their stored tensors."""
    out: dict[str, torch.Tensor] = {}
    if mode == "keep":
        return out
    for name in embedding_names(model):
        table = model.get_submodule(name).weight
        if mode == "int4" and table.shape[1] % GROUP:
            from ..errors import PtqflowError

            raise PtqflowError(f"embeddings: int4 needs embedding widths that are a multiple of {GROUP}; {name} is {table.shape[1]} wide")
        q = QuantizedEmbedding.from_float(table, mode, dtype)
        structure.replace_module(model, name, q)
        out[f"{name}.codes"], out[f"{name}.scale"] = q.codes.contiguous(), q.scale.contiguous()
    return out


def attach_embeddings(model: nn.Module, mode: EmbeddingMode, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> int:
    """Put the stored quantized embeddings (from `quantize_embeddings`) into `model`; returns how many."""
    if mode == "keep":
        return 0
    names = embedding_names(model)
    for name in names:
        structure.replace_module(model, name, QuantizedEmbedding(mode, tensors[f"{name}.codes"], tensors[f"{name}.scale"], dtype))
    return len(names)


def split_embedding_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the quantized-embedding tensors written by `quantize_embeddings`, everything else)."""
    def stored(key: str) -> bool:
        return key.endswith((".codes", ".scale")) and "::" not in key
    return {k: v for k, v in tensors.items() if stored(k)}, {k: v for k, v in tensors.items() if not stored(k)}


def count_quantized_embeddings(model: nn.Module) -> int:
    return sum(isinstance(m, QuantizedEmbedding) for m in model.modules())


def describe(mode: EmbeddingMode) -> str:
    return {"keep": "embeddings kept", "int8": "embeddings int8 per row", "int4": f"embeddings int4 per {GROUP} values"}[mode]
