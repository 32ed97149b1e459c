"""`compile: cuda-graph` (runtimes/cuda_graph.py): the whole forward as one CUDA graph per input signature. On a CPU
the mode is refused with its reason; on a GPU the replayed logits equal the compiled model's, a second shape gets
its own graph, and an output survives the next replay (outputs are cloned)."""

from __future__ import annotations

import pytest
import torch

from .conftest import GPT2
from .families import make_base


def test_cuda_graph_mode_needs_cuda():
    from ptqflow.quantize.registry import unavailable

    reason = unavailable("v", {"scheme": "cast", "dtype": "float16", "compile": "cuda-graph"}, torch.device("cpu"))
    assert "CUDA graphs" in reason and "cuda-graph" in reason


def test_graphed_model_refuses_cpu_inputs_and_keeps_the_wrapped_attributes():
    from ptqflow.runtimes.cuda_graph import GraphedModel

    inner = torch.nn.Linear(3, 2)
    inner.ptqflow_runtime = {"kind": "test"}
    graphed = GraphedModel(inner)
    assert graphed.ptqflow_runtime == {"kind": "test"} and graphed.weight is inner.weight
    assert sum(p.numel() for p in graphed.parameters()) == 8  # the compiled copy is not a second submodule
    with torch.inference_mode(), pytest.raises(RuntimeError, match="CUDA tensors only"):
        graphed(input=torch.zeros(1, 3))


@pytest.mark.gpu
def test_graph_replay_matches_the_compiled_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ptqflow.benchmark import build_from_config
    from ptqflow.runtimes.cuda_graph import GraphedModel

    build_from_config(str(make_base("gpt2", GPT2, tmp_path / "base")), {}, tmp_path / "model")
    cuda = torch.device("cuda")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", dtype=torch.float16).to(cuda).eval()
    graphed = GraphedModel(model)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        outs = []
        for shape in [(4, 16), (4, 16), (2, 24), (4, 16)]:
            ids = torch.randint(0, 1000, shape, generator=gen).to(cuda)
            mask = torch.ones_like(ids)
            want = model(input_ids=ids, attention_mask=mask).logits
            got = graphed(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
            outs.append((got, got.clone()))
    assert len(graphed._graphs) == 2
    for got, copy in outs:  # later replays did not overwrite earlier outputs
        assert torch.equal(got, copy)


def test_model_card_says_how_the_measured_compile_mode_is_applied():
    from ptqflow.package import compile_note

    assert compile_note("none", "transformers") == []
    assert "load_packaged(folder, device='cuda')" in compile_note("cuda-graph", "ptqflow")[0]
    assert "GraphedModel(model)" in compile_note("cuda-graph", "transformers")[0]
    assert "model.compile(mode='reduce-overhead')" in compile_note("reduce-overhead", "transformers")[0]
    assert "CUDA graph" not in compile_note("default", "transformers")[0]
