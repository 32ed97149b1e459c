"""`ptqflow assets`: put AG News in data/raw/ag_news/, the GPT-2 tokenizer + config in models/base/gpt2/ and the
pretrained encoder all-MiniLM-L6-v2 (weights, tokenizer, config) in models/base/all-MiniLM-L6-v2/.

From a mirror folder when it has them (default `$PTQFLOW_MIRROR`, else `../shared` beside the project, laid out
as `data/ag_news/` and `models/<name>/`), else from the Hugging Face Hub (`fancyzhx/ag_news`, `gpt2`,
`sentence-transformers/all-MiniLM-L6-v2`). `--model ID=DIR` brings any other Hub model the same way. Offline
with no mirror it stops with one line saying what is missing and how to provide it.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import PtqflowError

DATA_FILES = ("train.csv", "test.csv", "classes.txt")
HUB_DATASET = "fancyzhx/ag_news"
# Hugging Face model folders: what a model needs, and what comes with it (card, licence). Weights only when asked.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
               "special_tokens_map.json", "spiece.model", "tokenizer.model", "README.md", "MODEL_CARD.md", "LICENSE")
WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class ModelAsset:
    """A model folder to bring in: Hub id, destination, and whether its weights come too (else tokenizer + config).
    In a mirror it is looked up as models/<last part of the id>."""

    hub_id: str
    dest: str
    weights: bool

    @property
    def mirror_name(self) -> str:
        return self.hub_id.rstrip("/").split("/")[-1]


# the default pipeline's: the GPT-2 tokenizer + config (the reference study, built from scratch) and the pretrained encoder
MODELS = (ModelAsset("gpt2", "models/base/gpt2", weights=False),
          ModelAsset("sentence-transformers/all-MiniLM-L6-v2", "models/base/all-MiniLM-L6-v2", weights=True))


def parse_model_asset(text: str) -> ModelAsset:
    """`ID=DIR` (weights included) from the command line, e.g. `gpt2=models/base/gpt2-pretrained`."""
    hub_id, sep, dest = text.partition("=")
    if not sep or not hub_id.strip() or not dest.strip():
        raise PtqflowError(f"--model {text!r}: expected HUB_ID=FOLDER, e.g. bert-base-uncased=models/base/bert-base-uncased")
    return ModelAsset(hub_id.strip(), dest.strip(), weights=True)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection (a quick check before slow library retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_hub(what: str, hint: str) -> None:
    """Raise one clear PtqflowError when `what` needs the Hub and it cannot be reached."""
    if not hub_reachable():
        raise PtqflowError(f"{what} needs the Hugging Face Hub, which is not reachable from this machine; {hint}")


def _copy_files(src: Path, dst: Path, names: tuple[str, ...]) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        if (src / name).is_file():
            target = dst / name
            if not target.is_file() or target.read_bytes() != (src / name).read_bytes():
                shutil.copyfile(src / name, target)
            copied.append(name)
    return copied


def fetch_data(mirror: Path | None, dest: Path) -> str:
    src = mirror / "data" / "ag_news" if mirror else None
    if src and (src / "train.csv").is_file() and (src / "test.csv").is_file():
        _copy_files(src, dest, DATA_FILES)
        return f"AG News copied from {src}"
    require_hub(f"AG News (no mirror at {src or 'none given'})",
                "pass --mirror DIR with data/ag_news/{train,test}.csv, or put train.csv/test.csv in " + str(dest))
    from datasets import load_dataset

    ds = load_dataset(HUB_DATASET)
    dest.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        ds[split].to_pandas()[["text", "label"]].to_csv(dest / f"{split}.csv", index=False)
    (dest / "classes.txt").write_text("\n".join(ds["train"].features["label"].names) + "\n")
    return f"AG News downloaded from the Hub ({HUB_DATASET})"


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def fetch_model(asset: ModelAsset, mirror: Path | None, root: Path = Path(".")) -> str:
    """Copy the model folder from the mirror (`models/<name>`, when it has config, tokenizer and, if asked, the
    weights), else download those files from the Hub (`huggingface_hub.snapshot_download`)."""
    dest = root / asset.dest
    src = mirror / "models" / asset.mirror_name if mirror else None
    what = "weights, tokenizer and config" if asset.weights else "tokenizer and config"
    if src and (src / "config.json").is_file() and (not asset.weights or _has_weights(src)):
        names = tuple(p.name for p in src.iterdir() if p.is_file() and (asset.weights or p.name in MODEL_FILES))
        _copy_files(src, dest, names)
        return f"{asset.hub_id}: {what} copied from {src}"
    missing = "no mirror given" if src is None else (f"no {src}" if not src.is_dir() else f"{src} has no weights")
    require_hub(f"{asset.hub_id} ({what}; {missing})", f"pass --mirror DIR with models/{asset.mirror_name}/ in it")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(asset.hub_id, local_dir=str(dest),
                          allow_patterns=[*MODEL_FILES, *(WEIGHT_PATTERNS if asset.weights else ())])
    except Exception as exc:  # noqa: BLE001 - the Hub client raises many types (unknown repo, gated, network)
        raise PtqflowError(f"cannot download {asset.hub_id} from the Hugging Face Hub: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    if asset.weights and not _has_weights(dest):
        raise PtqflowError(f"{asset.hub_id}: no safetensors weights on the Hub (ptqflow loads safetensors only)")
    return f"{asset.hub_id}: {what} downloaded from the Hub"


def default_mirror() -> Path:
    """$PTQFLOW_MIRROR, else `../shared` beside the project (also from a DVC temporary experiment copy)."""
    from .io import project_root

    env = os.environ.get("PTQFLOW_MIRROR")
    return Path(env).resolve() if env else project_root().parent / "shared"


def fetch_assets(mirror: str | Path | None, data_dir: str | Path, models: tuple[ModelAsset, ...] = MODELS,
                 root: str | Path = ".") -> list[str]:
    """AG News into `data_dir` and each model folder into its destination under `root`; one line each."""
    mirror_path = Path(mirror) if mirror else None
    return [fetch_data(mirror_path, Path(data_dir)), *(fetch_model(m, mirror_path, Path(root)) for m in models)]
