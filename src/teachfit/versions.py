"""Versions of teachfit and the libraries that produced an output, for tracing and re-running."""
from __future__ import annotations

import platform
from importlib import metadata


def versions() -> dict[str, str]:
    """Installed versions of teachfit, Python and the model libraries (absent ones omitted)."""
    found = {"python": platform.python_version()}
    for name in ("teachfit", "torch", "transformers", "trl", "peft", "llama-cpp-python", "vllm", "numpy", "pyarrow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
