"""Atomic file and folder writes: a failed or killed stage never leaves a half-written output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path`, atomically (see write_text)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


_EXPS_MARK = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def project_root(cwd: str | Path | None = None) -> Path:
    """The project folder; from inside a DVC temporary experiment copy (`.dvc/tmp/exps/...`), the project it was copied from."""
    cwd = str(Path(cwd or os.getcwd()).resolve())
    if _EXPS_MARK in cwd + os.sep:
        return Path((cwd + os.sep).split(_EXPS_MARK)[0])
    return Path(cwd)


def dir_size_bytes(path: str | Path, pattern: str = "*") -> int:
    """Total size in bytes of the files under `path` matching `pattern` (recursively)."""
    return sum(p.stat().st_size for p in Path(path).rglob(pattern) if p.is_file())
