"""What the schemes share: loading the fine-tuned model, counting GPT-2's Conv1D projections, sizes."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2ForSequenceClassification
from transformers.pytorch_utils import Conv1D

from ..errors import PtqflowError
from ..io import dir_size_bytes


def load_finetuned(src_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> GPT2ForSequenceClassification:
    """The fine-tuned model; a damaged or truncated weights file is reported, never loaded as garbage."""
    try:
        model = GPT2ForSequenceClassification.from_pretrained(str(src_dir), dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - safetensors/transformers raise many types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PtqflowError(f"{src_dir}: cannot load the fine-tuned model ({type(exc).__name__}: {first})") from None
    return model.to(device).eval()


def count_conv1d(model: torch.nn.Module) -> int:
    """GPT-2's attention and MLP projections are transformers' Conv1D (4 per block: c_attn, c_proj, c_fc, mlp.c_proj)."""
    return sum(isinstance(m, Conv1D) for m in model.modules())


def weights_bytes(artifact_dir: Path) -> int:
    """Bytes of the weight files (*.safetensors) of an artifact: config and metadata JSON are not counted."""
    return dir_size_bytes(artifact_dir, "*.safetensors")


def runtime_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
