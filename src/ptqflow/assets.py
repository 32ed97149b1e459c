"""`ptqflow assets`: put AG News in data/raw/ag_news/ and the GPT-2 tokenizer + config in models/base/gpt2/.

From a mirror folder when it has them (default `$PTQFLOW_MIRROR`, else `../shared` beside the project,
laid out as `data/ag_news/` and `models/gpt2/`), else from the Hugging Face Hub (`fancyzhx/ag_news`, `gpt2`). Offline with no mirror
it stops with one line saying what is missing and how to provide it.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import PtqflowError

DATA_FILES = ("train.csv", "test.csv", "classes.txt")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
HUB_DATASET, HUB_MODEL = "fancyzhx/ag_news", "gpt2"


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


def fetch_model(mirror: Path | None, dest: Path) -> str:
    src = mirror / "models" / "gpt2" if mirror else None
    if src and (src / "config.json").is_file() and (src / "tokenizer.json").is_file():
        _copy_files(src, dest, MODEL_FILES)
        return f"GPT-2 tokenizer and config copied from {src}"
    require_hub(f"the GPT-2 tokenizer and config (no mirror at {src or 'none given'})",
                "pass --mirror DIR with models/gpt2/{config.json,tokenizer.json,...}")
    from transformers import AutoConfig, AutoTokenizer

    AutoTokenizer.from_pretrained(HUB_MODEL).save_pretrained(str(dest))
    AutoConfig.from_pretrained(HUB_MODEL).save_pretrained(str(dest))
    return f"GPT-2 tokenizer and config downloaded from the Hub ({HUB_MODEL})"


def default_mirror() -> Path:
    """$PTQFLOW_MIRROR, else `../shared` beside the project (also from a DVC temporary experiment copy)."""
    from .io import project_root

    env = os.environ.get("PTQFLOW_MIRROR")
    return Path(env).resolve() if env else project_root().parent / "shared"


def fetch_assets(mirror: str | Path | None, data_dir: str | Path, model_dir: str | Path) -> list[str]:
    mirror_path = Path(mirror) if mirror else None
    return [fetch_data(mirror_path, Path(data_dir)), fetch_model(mirror_path, Path(model_dir))]
