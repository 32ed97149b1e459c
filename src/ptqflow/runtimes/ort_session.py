"""Run an ONNX classifier through ONNX Runtime behind the same call as every PyTorch variant:
`model(input_ids=..., attention_mask=...[, token_type_ids=...]).logits`, on the same padded batches, with the
same thread count (torch's, fixed by the stage), so that evaluation and the interleaved benchmark treat it
like any other variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .onnx_export import numpy_feeds

LEVELS = ("disable", "basic", "extended", "all")


def provider_for(device: torch.device) -> str:
    return "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"


def missing_provider(device: torch.device) -> str | None:
    """Why ONNX Runtime cannot run on `device` here, or None."""
    import onnxruntime as ort

    wanted = provider_for(device)
    if wanted in ort.get_available_providers():
        return None
    return (f"ONNX Runtime {ort.__version__} here has no {wanted} (installed: {', '.join(ort.get_available_providers())}); "
            "the CUDA provider comes with the onnxruntime-gpu wheel")


def session_options(graph_optimization: str, threads: int):
    """Graph optimization level and a fixed intra-op thread count; one inter-op thread (sequential execution)."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[graph_optimization]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: ORT warns about every initializer it cannot constant-fold
    return so


class OrtClassifier(torch.nn.Module):
    """An `InferenceSession` with a sequence classifier's forward. It holds no torch parameters; the bytes of the
    weights ORT holds are reported by `extra_memory_bytes()` (sizes.memory_footprint reads it)."""

    def __init__(self, graph: Path, config, device: torch.device, graph_optimization: str = "all"):
        super().__init__()
        import onnx
        import onnxruntime as ort

        self.config = config
        self.device_type = device.type
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        self.session = ort.InferenceSession(str(graph), session_options(graph_optimization, threads),
                                            providers=[provider_for(device)])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.register_buffer("anchor", torch.empty(0, device=device), persistent=False)  # where inputs/outputs live
        proto = onnx.load(str(graph), load_external_data=False)
        self._weight_bytes = sum(_initializer_bytes(t) for t in proto.graph.initializer)
        self.ptqflow_runtime = {"runtime": f"onnxruntime {ort.__version__}", "provider": self.session.get_providers()[0],
                                "intra_op_threads": threads, "graph_optimization": graph_optimization,
                                "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))}

    def extra_memory_bytes(self) -> int:
        return self._weight_bytes

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: object) -> SequenceClassifierOutput:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        logits = self.session.run(["logits"], numpy_feeds(batch, self.inputs))[0]
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=torch.from_numpy(logits).to(self.anchor.device))


def _initializer_bytes(tensor) -> int:
    """Bytes of one ONNX initializer, stored inline or as external data."""
    from onnx import helper

    n = 1
    for d in tensor.dims:
        n *= d
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
