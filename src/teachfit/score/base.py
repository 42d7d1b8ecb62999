"""What a scorer is (the Scorer protocol) and DeferredScorer, a scorer whose model loads on first use."""
from __future__ import annotations

import sys
from typing import Any, Callable, Protocol, Sequence

from teachfit.records import Pair


class Scorer(Protocol):
    """Computes metric columns for pairs; the score cache keys each result by the pair and
    `key_material()`, so two scorers with equal material must compute equal values.

    A scorer may also offer prepare(pairs) (CPU work before its model runs, such as tokenizing,
    safe in another thread) and compute_prepared(pairs, prepared): the scoring engine then
    prepares the next window in a background thread while this one computes."""

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on (models, options, versions), JSON-ready."""

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records about this scorer."""

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """One dict of metric columns per pair, in order; a bad pair raises InputError."""


def is_cached(scorer: Any) -> bool:
    """Whether the engine caches the scorer's results (a pass of its own); a scorer with `cached`
    False reads a value the pairs carry, computed as the rows are assembled."""
    return getattr(scorer, "cached", True)


class DeferredScorer:
    """A scorer whose model loads on first use. Its cache key is known from the spec alone, so a
    run whose results are all cached (or computed by other workers) never loads the model."""

    def __init__(self, material: dict[str, Any], description: dict[str, Any], build: Callable[[], Scorer]):
        self._material, self._description, self._build = material, description, build
        self._scorer: Scorer | None = None

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on (computed without loading the model)."""
        return self._material

    def keyed(self, material: dict[str, Any]) -> None:
        """Key results with `material`: what the workers that computed them recorded (a driver
        without their GPUs would compute another dtype, and find none of their results)."""
        self._material = material

    def describe(self) -> dict[str, Any]:
        """The loaded scorer's description, or what the spec says when nothing was loaded."""
        return self._scorer.describe() if self._scorer is not None else self._description

    def release(self) -> None:
        """Drop the model (it loads again if a pair needs it) and free the accelerator's memory."""
        if self._scorer is not None:
            self._description = self._scorer.describe()  # what it loaded (template, dtype, ...) stays known
            self._scorer = None
            from teachfit.env import free_accelerator_memory

            free_accelerator_memory()

    def prepare(self, pairs: Sequence[Pair]) -> Any:
        """The loaded scorer's preparation of pairs (tokenizing: run by the scoring engine in a
        background thread), or None while nothing is loaded (a model loads in the main thread)."""
        scorer = self._scorer
        prepare = getattr(scorer, "prepare", None)
        return prepare(pairs) if prepare is not None else None

    def compute_prepared(self, pairs: Sequence[Pair], prepared: Any) -> list[dict[str, Any]]:
        """compute(), with what prepare() returned (None: nothing prepared)."""
        if prepared is None or self._scorer is None:
            return self.compute(pairs)
        return self._scorer.compute_prepared(pairs, prepared)

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """Load the model (once), then compute."""
        if self._scorer is None:
            from tqdm.auto import tqdm

            model = self._description.get("model", {}).get("spec", "")
            note = " (the first load of a GGUF converts it once: a minute or more)" if model.startswith(("gguf:", "packaged:")) else ""
            tqdm.write(f"loading {model}{note}", file=sys.stderr)
            self._scorer = self._build()
        return self._scorer.compute(pairs)
