"""vLLM on a GPU (extra [vllm]): the engine, and offline batch generation for teachers (the
model's own chat template is used). Students and references on vLLM: teachfit.score.vllm.

Engine options come from the spec: `vllm:Qwen/Qwen2.5-72B-Instruct?tensor_parallel_size=4&
max_model_len=8192&gpu_memory_utilization=0.9&dtype=bfloat16` (the keys are
teachfit.models.VLLM_ENGINE_OPTIONS; `engine_kwargs` is what reaches vllm.LLM, and describe()
records it). In an experiment file a teacher mapping may carry the same keys.

For scoring (teachfit.score.vllm) prefix caching is off and the engine step is capped at
SCORE_STEP_TOKENS (prompt log-probabilities materialize a tokens x vocabulary fp32 array per step).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from teachfit.env import require
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec
from teachfit.models.base import Generation, GenerationSettings, Messages

SCORE_STEP_TOKENS = 4096      # engine step cap for scoring: 4096 x 152k vocab x 4 B = 2.5 GB of logprobs


def engine_kwargs(spec: ModelSpec, trust_remote_code: bool = False, scoring: bool = False) -> dict[str, Any]:
    """The keyword arguments of vllm.LLM for a vllm: spec: the model, trust_remote_code, and the
    spec's engine options (already checked by ModelSpec.parse). For scoring, prefix caching is
    off and the engine step is bounded (SCORE_STEP_TOKENS) unless the spec sets them."""
    kwargs: dict[str, Any] = {"model": spec.name, "trust_remote_code": bool(trust_remote_code)}
    kwargs.update(dict(spec.options))
    if scoring:
        kwargs.setdefault("enable_prefix_caching", False)
        kwargs.setdefault("max_num_batched_tokens", SCORE_STEP_TOKENS)
        # chunked prefill lets a prompt longer than the step cap through, one chunk per step
        kwargs.setdefault("enable_chunked_prefill", True)
    return kwargs


def open_engine(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """(the vllm module, vllm.LLM(**kwargs)); a clear error without vLLM or without a GPU."""
    vllm = require("vllm", "vllm")  # first: without vLLM, the error names the extra to install
    torch = require("torch", "vllm")
    if not torch.cuda.is_available():
        raise RuntimeError("vllm: needs a CUDA GPU and none is visible; use hf:, gguf: or openai: on this machine")
    return vllm, vllm.LLM(**kwargs)


class VLLMTeacher:
    """A hub model or local folder served by vLLM's offline engine."""

    batch_size = 256

    def __init__(self, spec: ModelSpec, trust_remote_code: bool = False):
        self.spec, self.engine = spec, engine_kwargs(spec, trust_remote_code)
        self._vllm, self.llm = open_engine(self.engine)

    def describe(self) -> dict[str, Any]:
        """What a record says about the backend (the engine options included)."""
        return {"backend": "vllm", "spec": str(self.spec), "vllm": self._vllm.__version__, "engine": self.engine}

    def generate(self, conversations: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int]) -> list[Generation]:
        """One response per conversation, as one batch on the GPU."""
        params = [self._vllm.SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                                            max_tokens=settings.max_new_tokens, seed=seed) for seed in seeds]
        started = time.perf_counter()
        outputs = self.llm.chat(list(conversations), params, use_tqdm=False)
        seconds = (time.perf_counter() - started) / max(1, len(outputs))
        return [Generation(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason or "",
                           prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(o.outputs[0].token_ids),
                           seconds=seconds) for o in outputs]


@register("teacher", "vllm")
def load_vllm_teacher(spec: ModelSpec, **options: Any) -> VLLMTeacher:
    """Teacher loader for vllm: specs (engine options from the spec)."""
    return VLLMTeacher(spec, trust_remote_code=options.get("trust_remote_code", False))
