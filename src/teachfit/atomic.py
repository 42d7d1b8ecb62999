"""One way to write a file: a unique temporary file beside it, fsync, then an atomic rename.

A reader (or a killed writer) sees the old file or the new one, never a torn one; two processes
writing the same output never share a temporary name (pid + random suffix); and the rename
replaces a symbolic link at `path` instead of writing through it, so an output that a link
points elsewhere is never overwritten outside the run directory. A cached folder made once
(a converted or dequantized model) is written the same way (folder_once).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

DONE_MARKER = "teachfit-done.json"  # the last file written into a folder_once folder: it is complete


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


def folder_done(target: str | os.PathLike) -> bool:
    """Whether a folder_once folder is complete (its DONE_MARKER is there)."""
    return (Path(target) / DONE_MARKER).exists()


@contextlib.contextmanager
def folder_once(target: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside `target`, unique to this process and thread, for the caller to fill
    and to write DONE_MARKER into last; then renamed to `target`. When another worker completed
    `target` meanwhile, this one's folder is deleted and theirs kept (two workers making the same
    folder at once both end with it whole). On any exception the temporary folder is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    tmp.mkdir()
    try:
        yield tmp
        if not folder_done(target):
            if target.exists():  # a leftover without its marker (never made by this function)
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:  # another worker's complete folder took the name first
                if not folder_done(target):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
