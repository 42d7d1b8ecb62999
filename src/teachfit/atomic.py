"""One way to write a file: a unique temporary file beside it, fsync, then an atomic rename.

A reader (or a killed writer) sees the old file or the new one, never a torn one; two processes
writing the same output never share a temporary name (pid + random suffix); and the rename
replaces a symbolic link at `path` instead of writing through it, so an output that a link
points elsewhere is never overwritten outside the run directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success fsync and rename it over
    `path`, on any exception (Ctrl-C included) remove it and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    binary = "b" in mode
    try:
        with open(tmp, mode, encoding=None if binary else encoding, newline=None if binary else newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def temporary_path(path: str | os.PathLike) -> Path:
    """A temporary name beside `path` that no other process or thread uses: .<name>.<pid>.<random>.tmp."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_write(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as strict JSON (no NaN/Infinity tokens: they become null) atomically."""
    write_text_atomic(path, json.dumps(strict_json(data), indent=2, default=str, allow_nan=False))


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so any JSON reader accepts it."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
