"""Executors: where the shards of a stage run (datatrove's model: shard by rank, completion markers).

`local` runs everything in this process. `ray` (teachfit.executors.ray) hands one task per
shard to Ray workers; each task loads its model once, writes its own shard files and leaves a
completion marker, so a killed run redoes only the shards without one. teachfit's content-hash
caches stay the resume mechanism inside a shard.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence


class LocalExecutor:
    """Run tasks one after another in this process."""

    world_size = 1

    def map(self, function: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        """function(task) for each task, in order."""
        return [function(task) for task in tasks]

    def describe(self) -> dict[str, Any]:
        """What the manifest records."""
        return {"type": "local"}


def make_executor(config: Any = None) -> Any:
    """The executor an ExecutorConfig (or None, or 'local'/'ray') names."""
    if config is None or config == "local" or getattr(config, "type", None) == "local":
        return LocalExecutor()
    from teachfit.executors.ray import RayExecutor
    from teachfit.config import ExecutorConfig

    return RayExecutor(config if not isinstance(config, str) else ExecutorConfig(type=config))
