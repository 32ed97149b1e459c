"""The whole forward as one CUDA graph per input signature: `compile: cuda-graph`.

`torch.compile(mode="reduce-overhead")` also replays CUDA graphs, but each call still runs Dynamo's guards (one
per parameter tensor of the model), the graph tree's input checks and the Python around the compiled region before
the replay starts; on a GPU that finishes a batch in about a millisecond that host time is a large part of the
latency (GPT-2 124M on an H200: 0.17-0.26 ms of each forward, benchmarks/fused-h200/bench-124m-graphed.md). `GraphedModel` compiles the model with
Inductor (default mode, no CUDA graphs of its own), runs it a few times on a side stream for each new input
signature (the shapes, dtypes and non-tensor arguments of a call) and captures one graph; later calls with that
signature copy their tensors into the graph's static inputs and replay it: the GPU work is the same kernels, the
host work one copy per input and one launch.

The outputs are cloned after each replay (the graph's own output buffers are overwritten by the next replay).
Graphs share one memory pool (safe because replays run one at a time on the capturing stream and every output
is cloned before the next one). CUDA only; gradients are not recorded (inference).
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

WARMUP_CALLS = 3  # before a capture: compilation, Triton autotuning and cuBLAS workspace allocation happen here


class GraphedModel(torch.nn.Module):
    """`model` compiled by Inductor and replayed as one CUDA graph per input signature (see the module docstring).
    Attributes the wrapper lacks (`config`, `ptqflow_runtime`, ...) are the wrapped model's."""

    def __init__(self, model: torch.nn.Module, compile_mode: str = "default"):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_compiled", torch.compile(model, mode=compile_mode))  # not a submodule: no second copy of the parameters
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, object]] = {}
        self._pool = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    @staticmethod
    def signature(kwargs: dict) -> tuple:
        return tuple(sorted((k, (tuple(v.shape), v.dtype, v.device)) if isinstance(v, torch.Tensor) else (k, v) for k, v in kwargs.items()))

    def forward(self, **kwargs):
        if torch.compiler.is_compiling():
            raise RuntimeError("a GraphedModel captures CUDA graphs itself; compile the wrapped model, not the wrapper")
        tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        if torch.is_grad_enabled() or not tensors or any(not t.is_cuda for t in tensors):
            raise RuntimeError("compile mode 'cuda-graph' runs inference on CUDA tensors only (no gradients): "
                               "call under torch.inference_mode() with the inputs on the GPU")
        key = self.signature(kwargs)
        if key not in self._graphs:
            self._graphs[key] = self._capture(kwargs)
        graph, static, out = self._graphs[key]
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                static[name].copy_(value)
        graph.replay()
        return pytree.tree_map_only(torch.Tensor, torch.clone, out)

    def _capture(self, kwargs: dict):
        static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._compiled(**static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._compiled(**static)
        self._pool = graph.pool()
        return graph, static, out
