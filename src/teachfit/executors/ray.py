"""The Ray executor: one Ray task per shard, each loading its model once (`pip install 'teachfit[ray]'`).

Tasks get the driver's teachfit and Hugging Face environment variables (cache folders, offline
flags), so workers on one machine share the run's caches. On a multi-node cluster the run
directory must be on a filesystem every node sees (NFS, Lustre, a mounted bucket).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from teachfit.env import require

PASSED_ENV = ("TEACHFIT_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
)  # API keys are not passed: a secret never goes into a runtime_env; set it on the workers


class RayExecutor:
    """Run tasks as Ray tasks: `num_workers` shards, each with its CPUs and GPUs."""

    def __init__(self, config: Any):
        self.config = config
        self.world_size = config.num_workers

    def _ray(self) -> Any:
        ray = require("ray", "ray")
        if not ray.is_initialized():
            options: dict[str, Any] = {"address": self.config.address} if self.config.address else \
                {"num_cpus": max(int(self.config.num_workers * self.config.num_cpus_per_worker), 1)}
            ray.init(include_dashboard=False, log_to_driver=False, **options)
        return ray

    def map(self, function: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        """function(task) for each task on Ray workers; results in task order. A failed task
        raises here (its shard has no completion marker, so a re-run redoes only it)."""
        if not tasks:
            return []
        ray = self._ray()
        return ray.get([self.remote(ray, function).remote(task) for task in tasks])

    def remote(self, ray: Any, function: Callable[[Any], Any]) -> Any:
        """`function` as a Ray task with this executor's resources.

        - A task without GPUs sees none: Ray leaves CUDA_VISIBLE_DEVICES alone when num_gpus is 0,
          so every such worker would pick cuda:0 of its node; it is set empty here.
        - max_calls=1: the worker process ends after its task, so the next shard's model never
          shares a process (and GPU memory) with the previous one (Ray sets this default for GPU
          functions, and `.options(num_gpus=...)` drops it)."""
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        if not self.config.num_gpus_per_worker:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return ray.remote(max_calls=1)(function).options(num_cpus=self.config.num_cpus_per_worker,
                                                         num_gpus=self.config.num_gpus_per_worker,
                                                         runtime_env={"env_vars": env}, max_retries=0)

    def describe(self) -> dict[str, Any]:
        """What the manifest records."""
        return {"type": "ray", "address": self.config.address, "num_workers": self.config.num_workers,
                "num_gpus_per_worker": self.config.num_gpus_per_worker}
