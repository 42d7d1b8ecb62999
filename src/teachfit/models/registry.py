"""The registry of model backends: a loader per (role, spec prefix), registered by the module
that implements it (`@register("teacher", "hf")`). Roles: causal_lm, sequence_classifier,
teacher, judge (models/), lm_scorer and lm_scorer_key (teachfit.score: served and vLLM students).
"""
from __future__ import annotations

from typing import Any, Callable

LOADERS: dict[str, dict[str, Callable[..., Any]]] = {}


def register(role: str, prefix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a loader for (role, prefix)."""

    def wrap(loader: Callable[..., Any]) -> Callable[..., Any]:
        LOADERS.setdefault(role, {})[prefix] = loader
        return loader

    return wrap
