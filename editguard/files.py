"""Atomic file writes, for every stage: a reader sees the old file or the new one, never half of one.

Each write goes to a hidden temporary file beside its target (the same filesystem) and is renamed
onto it with :func:`os.replace`; a failure, or a kill, leaves at most that temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "replace_dir", "iter_jsonl", "JsonlAppender"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends, removed
    when it raises. The folder of ``path`` must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Copy the folder ``src`` to ``dst``, replacing what is there: the copy is made under a temporary
    name beside ``dst``, then the old folder is removed and the copy renamed into place."""
    src, dst = Path(src), Path(dst)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(src, tmp)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """The complete lines of a JSONL file as dicts (a torn last line, from a kill mid-write, is left out)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                yield json.loads(line)


class JsonlAppender:
    """Append rows to a JSONL file, each flushed as written, exactly once by ``key``, also after ``kill -9``:
    reopening cuts off a torn last line, and ``seen`` holds the keys already on disk."""

    def __init__(self, path: str | Path, key: str = "id"):
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        self.seen: set = {r[key] for r in iter_jsonl(self.path)} if self.path.exists() else set()
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        self.seen.add(row[self.key])

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
