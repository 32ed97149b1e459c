"""What the schemes share: loading the fine-tuned model (any architecture), the per-row int8 formula, sizes.
Where the projections, embeddings and head are is structure.py's job."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PtqflowError
from ..io import dir_size_bytes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def absmax_int8_rows(t: torch.Tensor, qmax: float = 127.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row r of a 2-D tensor t: s[r] = max_k |t[r, k]| / Q (1 for an all-zero row),
    q[r, k] = clamp(round(t[r, k] / s[r]), -Q, Q); returns q (int8) and s (float32, [rows]). Q = 127 for 8 bits,
    2^(b-1) - 1 for b bits stored in int8. Then |t - q * s| <= s / 2 elementwise."""
    t = t.detach().to(torch.float32)
    scale = t.abs().amax(dim=1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(t / scale[:, None]), -qmax, qmax).to(torch.int8), scale


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an artifact's safetensors file; a damaged file is one PtqflowError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise PtqflowError(f"{path}: not a readable safetensors file ({exc})") from None


def load_finetuned(src_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The fine-tuned model; a damaged or truncated weights file is reported, never loaded as garbage."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(src_dir), dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - safetensors/transformers raise many types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PtqflowError(f"{src_dir}: cannot load the fine-tuned model ({type(exc).__name__}: {first})") from None
    return model.to(device).eval()


def skeleton(artifact_dir: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The artifact's architecture with fresh weights, to load stored tensors into (AutoConfig decides the class)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(artifact_dir))
    return AutoModelForSequenceClassification.from_config(config, dtype=dtype)


def from_artifact(artifact_dir: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """A plain Hugging Face artifact (fp32 / cast), in `dtype` on `device`."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(artifact_dir), dtype=dtype).to(device)


WEIGHT_FILES = ("*.safetensors", "*.onnx", "*.onnx.data", "*.xml", "*.bin")  # PyTorch; ONNX + external data; OpenVINO IR
WEIGHT_FILES_NOTE = "weight files: *.safetensors, or *.onnx + its external data (*.onnx.data), or an OpenVINO IR (*.xml + *.bin)"


def weights_bytes(artifact_dir: Path) -> int:
    """Bytes of the weight files of an artifact (WEIGHT_FILES): config and metadata JSON are not counted."""
    return sum(dir_size_bytes(artifact_dir, pattern) for pattern in WEIGHT_FILES)


def runtime_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
