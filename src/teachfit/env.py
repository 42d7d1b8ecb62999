"""The ground floor every module may import (it imports nothing of teachfit): optional
dependencies behind extras, teachfit's cache folder, and the files shipped in the package.
"""
from __future__ import annotations

import importlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

SHIPPED_PREFIX = "teachfit:"  # a study file's name for a file inside the package: teachfit:data/...


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail with the pip command that installs it:
    `pip install 'teachfit[<extra>]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is needed for this and is not installed: pip install 'teachfit[{extra}]'"
            + (" (and a torch build of your choice)" if module == "torch" else "")
        ) from error


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read a block at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def free_accelerator_memory() -> None:
    """Collect dropped models now and hand the GPU's cached blocks back (when torch is loaded), so
    the next model of a stage finds the memory the previous one held."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def cache_root() -> Path:
    """teachfit's own cache folder (packaged models, dequantized GGUFs, nltk data):
    $TEACHFIT_CACHE, else ~/.cache/teachfit. A run's results are cached in the run instead."""
    return Path(os.environ.get("TEACHFIT_CACHE", Path.home() / ".cache" / "teachfit"))


def package_file(path: str) -> Path:
    """A file inside the installed package: `data/...`, or `teachfit:data/...` as a study names it."""
    return Path(str(resources.files("teachfit").joinpath(path.removeprefix(SHIPPED_PREFIX))))


def shipped(path: str) -> Path:
    """A file shipped in the package's data folder (teachfit/data/<path>)."""
    return package_file(f"data/{path}")


def distribution_file(distribution: str, path: str) -> tuple[Path, str] | None:
    """A data file inside another installed distribution (a wheel of benchmark sets) and that
    distribution's version, found through its metadata without importing any of its code; None
    when the distribution, or that file in it, is not installed."""
    from importlib import metadata

    try:
        found = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    located = Path(str(found.locate_file(path)))
    return (located, found.version) if located.is_file() else None


def shipped_text(path: str) -> str:
    """The UTF-8 text of a file shipped in teachfit/data."""
    return shipped(path).read_text(encoding="utf-8")
