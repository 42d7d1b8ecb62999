"""Model specs (`prefix:name[?options]`): parsing, checking, fingerprints.

  hf:<hub id or local dir>     transformers
  gguf:<path>                  a GGUF file (dequantized into torch by transformers' gguf_file=)
  packaged:<name>              an offline model shipped by a PyPI package (see packaged.py)
  openai:<model>@<base_url>    any OpenAI-compatible server (teachers, judges; students and references
                               through the server's prompt log-probabilities: teachfit.score.served)
  openai-batch:<model>@<url>   a provider's batch API (/v1/files + /v1/batches, models/openai_batch.py):
                               teachers; `openai:<model>@<url>?batch=1` is the same spec
  vllm:<hub id or dir>         vLLM on a GPU (teachers, students and references)

openai: and vllm: specs take options after `?` (SPEC_OPTIONS): `vllm:Qwen/Qwen2.5-72B-Instruct?
tensor_parallel_size=4&max_model_len=8192`, `openai:m@http://host:8000/v1?server=vllm`. They are
checked when the spec is parsed (an unknown key or a value of the wrong type is a ModelSpecError
naming the known keys), kept in `ModelSpec.options`, and part of str(spec), hence of records and
cache keys.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, quote, urlencode

from teachfit.models.packaged import PACKAGED, resolve_packaged

PREFIXES = ("hf", "gguf", "packaged", "openai", "openai-batch", "vllm")


class ModelSpecError(ValueError):
    """A model spec that cannot be parsed or resolved."""


GGUF_MAGIC = b"GGUF"


def check_gguf_magic(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes, before any loader sees it."""
    with open(path, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        what = "an empty file" if not head else f"it starts with {head!r}, not {GGUF_MAGIC!r}"
        raise ModelSpecError(f"{path}: not a valid GGUF file ({what})")


def _boolean(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true | false)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{text!r} is not an integer >= 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise ValueError(f"{text!r} is not a number in (0, 1]")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {' | '.join(choices)}")
        return text

    convert.__name__ = " | ".join(choices)
    return convert


def _env_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise ValueError(f"{text!r} is not an environment variable name")
    return text


# vLLM engine arguments a spec may set (vllm.LLM(**kwargs); teachfit.models.vllm_backend.engine_kwargs)
VLLM_ENGINE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "tensor_parallel_size": _positive_int, "pipeline_parallel_size": _positive_int,
    "max_model_len": _positive_int, "gpu_memory_utilization": _fraction,
    "dtype": _choice("auto", "float16", "bfloat16", "float32"), "quantization": str,
    "enforce_eager": _boolean, "max_num_seqs": _positive_int, "max_num_batched_tokens": _positive_int,
    "enable_prefix_caching": _boolean,
}
# options of each prefix after `?` in a spec: key -> converter (raises ValueError on a bad value)
SPEC_OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "vllm": VLLM_ENGINE_OPTIONS,
    # key_env: the environment variable holding the API key (openai_api.key_env_for: the one rule);
    # served students and references (teachfit.score.served): which adapter, and whose chat template
    # batch: the provider's batch API instead (parsed into the openai-batch: spec, openai_batch.py)
    "openai": {"server": _choice("auto", "llamacpp", "vllm", "sglang"), "template": str, "key_env": _env_name,
               "batch": _boolean},
    "openai-batch": {"key_env": _env_name},
}


def parse_spec_options(prefix: str, query: str, text: str) -> tuple[tuple[str, Any], ...]:
    """`k=v&...` after a spec's `?` -> sorted (key, typed value) pairs, checked against SPEC_OPTIONS."""
    known = SPEC_OPTIONS.get(prefix, {})
    try:
        items = parse_qsl(query, strict_parsing=True, keep_blank_values=True)
    except ValueError:
        raise ModelSpecError(f"'{text}': options must look like ?key=value&key=value") from None
    options: dict[str, Any] = {}
    for key, value in items:
        if key not in known:
            raise ModelSpecError(f"'{text}': unknown {prefix}: option '{key}' (known: {', '.join(sorted(known))})")
        try:
            options[key] = known[key](value)
        except ValueError as error:
            raise ModelSpecError(f"'{text}': option {key}: {error}") from None
        if isinstance(options[key], str) and not options[key]:
            raise ModelSpecError(f"'{text}': option {key} is empty")
    return tuple(sorted(options.items()))


def uses_batch_api(text: str) -> bool:
    """Whether a model spec goes through a provider's batch API (openai-batch:, or openai:...?batch=1);
    False for a spec that does not parse."""
    try:
        return ModelSpec.parse(text).prefix == "openai-batch"
    except ModelSpecError:
        return False


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `prefix:name[?options]` model reference."""

    prefix: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        """One of the spec's `?key=value` options, else `default`."""
        return dict(self.options).get(key, default)

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
        if spec.prefix in SPEC_OPTIONS and "?" in spec.name:
            name, _, query = spec.name.rpartition("?")
            spec = cls(spec.prefix, name, parse_spec_options(spec.prefix, query, text))
        if spec.prefix == "openai" and spec.option("batch") is not None:  # ?batch=1: one spelling, openai-batch:
            rest = tuple((k, v) for k, v in spec.options if k != "batch")
            if spec.option("batch"):
                batch_keys = SPEC_OPTIONS["openai-batch"]
                if any(k not in batch_keys for k, _ in rest):
                    raise ModelSpecError(f"'{text}': with batch=1 the only other option is "
                                         f"{', '.join(sorted(batch_keys))}")
                spec = cls("openai-batch", spec.name, rest)
            else:
                spec = cls("openai", spec.name, rest)
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
        query = f"?{urlencode([(k, str(v).lower() if isinstance(v, bool) else v) for k, v in self.options], safe=':/', quote_via=quote)}" \
            if self.options else ""
        return f"{self.prefix}:{self.name}{query}"

    @property
    def base(self) -> str:
        """`prefix:name` without options."""
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
