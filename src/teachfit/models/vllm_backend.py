"""vLLM offline batch generation on a GPU (extra [vllm]); the model's own chat template is used."""
from __future__ import annotations

import time
from typing import Any, Sequence

from teachfit.models import ModelSpec, register, require
from teachfit.models.base import Generation, GenerationSettings, Messages


class VLLMTeacher:
    """A hub model or local folder served by vLLM's offline engine."""

    batch_size = 256

    def __init__(self, spec: ModelSpec, trust_remote_code: bool = False, **engine: Any):
        torch = require("torch", "vllm")
        if not torch.cuda.is_available():
            raise RuntimeError("vllm: needs a CUDA GPU and none is visible; use hf:, gguf: or openai: on this machine")
        vllm = require("vllm", "vllm")
        self.spec, self._vllm = spec, vllm
        self.llm = vllm.LLM(model=spec.name, trust_remote_code=trust_remote_code, **engine)

    def describe(self) -> dict[str, Any]:
        """What a record says about the backend."""
        return {"backend": "vllm", "spec": str(self.spec), "vllm": self._vllm.__version__}

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
    """Teacher loader for vllm: specs."""
    return VLLMTeacher(spec, trust_remote_code=options.get("trust_remote_code", False))
