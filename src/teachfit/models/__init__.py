"""Model specs (`prefix:name`) and the registry of backends that load them, one per role.

  hf:<hub id or local dir>     transformers
  gguf:<path>                  a GGUF file (dequantized into torch by transformers' gguf_file=)
  packaged:<name>              an offline model shipped by a PyPI package (see packaged.py)
  openai:<model>@<base_url>    any OpenAI-compatible server (teachers and judges)
  vllm:<hub id or dir>         vLLM on a GPU (teachers)
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from teachfit.models.packaged import PACKAGED, resolve_packaged

PREFIXES = ("hf", "gguf", "packaged", "openai", "vllm")
# modules that register loaders, imported on first use (heavy libraries stay lazy inside them)
BACKEND_MODULES = ("teachfit.models.hf", "teachfit.models.llamacpp", "teachfit.models.openai_api",
                   "teachfit.models.vllm_backend", "teachfit.judging")


class ModelSpecError(ValueError):
    """A model spec that cannot be parsed or resolved."""


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is needed for this and is not installed: pip install 'teachfit[{extra}]'"
            + (" (and a torch build of your choice)" if module == "torch" else "")
        ) from error


GGUF_MAGIC = b"GGUF"


def check_gguf_magic(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes, before any loader sees it."""
    with open(path, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        what = "an empty file" if not head else f"it starts with {head!r}, not {GGUF_MAGIC!r}"
        raise ModelSpecError(f"{path}: not a valid GGUF file ({what})")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `prefix:name` model reference."""

    prefix: str
    name: str

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse `prefix:name`; a bare existing path or hub id means `hf:`, a bare *.gguf means `gguf:`."""
        prefix, sep, name = text.partition(":")
        if sep and prefix in PREFIXES:
            spec = cls(prefix, name)
        elif text.endswith(".gguf"):
            spec = cls("gguf", text)
        elif sep and "/" not in prefix and not Path(text).expanduser().exists():  # hub ids have no ':'
            raise ModelSpecError(f"unknown model prefix '{prefix}:' in '{text}'; use one of "
                                 f"{', '.join(p + ':' for p in PREFIXES)}")
        else:
            spec = cls("hf", text)
        if not spec.name:
            raise ModelSpecError(f"empty model name in '{text}'")
        if spec.prefix == "packaged" and spec.name not in PACKAGED:
            raise ModelSpecError(f"unknown packaged model '{spec.name}'; known: {', '.join(sorted(PACKAGED))}")
        if spec.prefix == "gguf" and not Path(spec.name).is_file():
            raise ModelSpecError(f"GGUF file not found: {spec.name}")
        if spec.prefix == "gguf":
            check_gguf_magic(Path(spec.name))
        if spec.prefix == "hf" and spec.name.startswith(("/", "./", "../", "~")) and not Path(spec.name).expanduser().exists():
            raise ModelSpecError(f"local model folder not found: {spec.name}")
        return spec

    def __str__(self) -> str:
        return f"{self.prefix}:{self.name}"

    def gguf_path(self) -> Path | None:
        """The GGUF file behind a gguf:/packaged: spec (assembled if needed), else None."""
        if self.prefix == "packaged":
            return resolve_packaged(self.name)
        if self.prefix == "gguf":
            return Path(self.name)
        return None

    def fingerprint(self) -> str:
        """A short stable identity of the weights: checksum for packaged models, path, size and
        mtime for files, config and weight-file stats for local folders, the id otherwise."""
        identity: dict[str, Any] = {"spec": str(self)}
        if self.prefix == "packaged":
            identity["sha256"] = PACKAGED[self.name].sha256
        elif self.prefix == "gguf":
            stat = Path(self.name).stat()
            identity.update(path=str(Path(self.name).resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        elif Path(self.name).is_dir():
            folder = Path(self.name)
            identity["files"] = sorted(
                (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()
            )
        blob = json.dumps(identity, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


LOADERS: dict[str, dict[str, Callable[..., Any]]] = {}


def register(role: str, prefix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a loader for (role, prefix)."""

    def wrap(loader: Callable[..., Any]) -> Callable[..., Any]:
        LOADERS.setdefault(role, {})[prefix] = loader
        return loader

    return wrap


LOAD_COUNTS: dict[str, int] = {}  # models loaded in this process, by role (a resumed run loads none)


def load(role: str, spec: str | ModelSpec, **options: Any) -> Any:
    """Load a model for `role` ('causal_lm', 'sequence_classifier', 'teacher', 'judge') through the registry."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    LOAD_COUNTS[role] = LOAD_COUNTS.get(role, 0) + 1
    for module in BACKEND_MODULES:
        importlib.import_module(module)
    loaders = LOADERS.get(role, {})
    if spec.prefix not in loaders:
        raise ModelSpecError(f"no '{role}' backend for prefix '{spec.prefix}:' (have {', '.join(loaders)})")
    return loaders[spec.prefix](spec, **options)
