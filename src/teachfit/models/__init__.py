"""Models by spec (`prefix:name[?options]`, models/spec.py) and the registry of backends that load
them, one loader per (role, prefix) (models/registry.py):

  hf: gguf: packaged:   transformers in process (models/hf.py); llama.cpp teachers and judges
                        (models/llamacpp.py, models/judges.py)
  openai:               any OpenAI-compatible server: teachers and judges (models/openai_api.py,
                        models/judges.py)
  openai-batch:         a provider's batch API (/v1/files, /v1/batches; models/openai_batch.py): teachers
                        (models/batch_teacher.py), judges (models/batch_judge.py)
  vllm:                 vLLM on a GPU: teachers (models/vllm_backend.py)

Students and references behind a server or vLLM are scorers, registered by teachfit.score.
`load` imports every backend of this package explicitly, then asks the registry.
"""
from __future__ import annotations

from typing import Any, Callable

from teachfit.models.registry import LOADERS, register
from teachfit.models.spec import (PREFIXES, SPEC_OPTIONS, VLLM_ENGINE_OPTIONS, ModelSpec, ModelSpecError,
                                  check_gguf_magic)

__all__ = ["LOADERS", "LOAD_COUNTS", "PREFIXES", "SPEC_OPTIONS", "VLLM_ENGINE_OPTIONS", "ModelSpec", "ModelSpecError",
           "check_gguf_magic", "has_loader", "load", "loaders", "register"]

LOAD_COUNTS: dict[str, int] = {}  # models loaded in this process, by role (a resumed run loads none)


def loaders(role: str) -> dict[str, Callable[..., Any]]:
    """The registered loaders of `role`, by prefix (this package's backends imported first; each
    keeps its heavy library lazy)."""
    # each registers its loaders when imported
    from teachfit.models import batch_judge, batch_teacher, hf, judges, llamacpp, openai_api, vllm_backend  # noqa: F401

    return LOADERS.get(role, {})


def load(role: str, spec: str | ModelSpec, **options: Any) -> Any:
    """Load a model for `role` ('causal_lm', 'sequence_classifier', 'teacher', 'judge') through the registry."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    LOAD_COUNTS[role] = LOAD_COUNTS.get(role, 0) + 1
    found = loaders(role)
    if spec.prefix not in found:
        raise ModelSpecError(f"no '{role}' backend for prefix '{spec.prefix}:' (have {', '.join(found)})")
    return found[spec.prefix](spec, **options)


def has_loader(role: str, prefix: str) -> bool:
    """Whether some backend registers a loader for (role, prefix)."""
    return prefix in loaders(role)
