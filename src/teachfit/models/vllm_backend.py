"""vLLM on a GPU (extra [vllm]): the engine, and offline batch generation for teachers (the
model's own chat template, or teachfit's default for a model without one, as on hf:). Students
and references on vLLM: teachfit.score.vllm.

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
from teachfit.models.base import Generation, GenerationSettings, Messages, model_sampling_defaults

SCORE_STEP_TOKENS = 4096      # engine step cap for scoring: 4096 x 152k vocab x 4 B = 2.5 GB of logprobs


def prompt_token_limit(max_length: int, max_model_len: int | None) -> int:
    """The most prompt tokens vLLM takes when one token is to be generated: max_model_len - 1.
    vLLM refuses a prompt of exactly max_model_len tokens for a generating model
    (vllm/v1/engine/input_processor.py, InputProcessor._validate_prompt_len: `prompt_len ==
    max_prompt_len and model_config.runner_type == "generate"` raises "... plus the number of
    requested output tokens (at least 1) is longer than the maximum model length"), and the
    error fails the whole llm.generate / llm.chat call. (A CPU cannot run vLLM: this is read
    from its source and tested on this function.)"""
    if not max_model_len:
        return max_length
    return max(1, min(max_length, int(max_model_len) - 1))


def generation_config_of(spec: ModelSpec) -> Any:
    """The model's generation_config (transformers.GenerationConfig from the hub id or folder, as
    vLLM's own try_get_generation_config reads it), or None when it has none or cannot be read."""
    try:
        import transformers

        return transformers.GenerationConfig.from_pretrained(spec.name)
    except (ImportError, OSError, ValueError, TypeError):
        return None


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
        kwargs.setdefault("max_logprobs", 100)  # RSR's strict rank reads the top 100 tokens (score/vllm.py)
    return kwargs


def open_engine(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """(the vllm module, vllm.LLM(**kwargs)); a clear error without vLLM or without a GPU."""
    vllm = require("vllm", "vllm")  # first: without vLLM, the error names the extra to install
    torch = require("torch", "vllm")
    if not torch.cuda.is_available():
        raise RuntimeError("vllm: needs a CUDA GPU and none is visible; use hf:, gguf: or openai: on this machine")
    return vllm, vllm.LLM(**kwargs)


class VLLMTeacher:
    """A hub model or local folder served by vLLM's offline engine.

    The same conversation contract as HFTeacher: the model's chat template, or teachfit's default
    (template.ensure_chat_template) for a base model without one, passed to LLM.chat as
    chat_template=; the same model sampling settings (model_sampling_defaults of the model's
    generation_config, which vLLM ignores when SamplingParams are given); an instruction whose
    prompt does not fit the context is refused alone as an error record, before vLLM sees it."""

    batch_size = 256

    def __init__(self, spec: ModelSpec, trust_remote_code: bool = False):
        from teachfit.template import DEFAULT_CHAT_TEMPLATE, ensure_chat_template

        self.spec, self.engine = spec, engine_kwargs(spec, trust_remote_code)
        self._vllm, self.llm = open_engine(self.engine)
        self.tokenizer = self.llm.get_tokenizer()
        self.template_name = ensure_chat_template(self.tokenizer)
        self.chat_template = None if self.template_name == "model" else DEFAULT_CHAT_TEMPLATE
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.max_model_len = getattr(model_config, "max_model_len", None)
        self.model_sampling = model_sampling_defaults(generation_config_of(spec))

    def describe(self) -> dict[str, Any]:
        """What a record says about the backend (the engine options, the template and the model's
        sampling settings applied on top of the dataset's included)."""
        return {"backend": "vllm", "spec": str(self.spec), "vllm": self._vllm.__version__, "engine": self.engine,
                "template": self.template_name, "model_sampling": dict(self.model_sampling),
                "max_model_len": self.max_model_len}

    def prompt_tokens(self, conversation: Messages) -> int | None:
        """How many tokens LLM.chat makes of a conversation: the chat template rendered with the
        generation prompt, then encoded without special tokens (vllm/entrypoints/llm.py, LLM.chat:
        apply_hf_chat_template, tokenizer.encode(prompt, add_special_tokens=False)); None when the
        tokenizer cannot say (vLLM then decides)."""
        try:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True,
                                                      chat_template=self.chat_template)
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        except Exception:  # noqa: BLE001  (a tokenizer vLLM renders its own way, e.g. Mistral's): no pre-check
            return None

    def generate(self, conversations: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int]) -> list[Generation]:
        """One response per conversation, as one batch on the GPU; a conversation whose prompt is
        max_model_len tokens or more is an error record of its own (vLLM would refuse it and fail
        the whole batch)."""
        limit = self.max_model_len - 1 if self.max_model_len else None  # see prompt_token_limit
        results: list[Generation | None] = [None] * len(conversations)
        keep: list[int] = []
        for index, conversation in enumerate(conversations):
            count = self.prompt_tokens(conversation) if limit is not None else None
            if count is not None and count > limit:
                results[index] = Generation(
                    error=f"instruction too long for {self.spec}: {count} prompt tokens, the engine's max_model_len "
                          f"is {self.max_model_len} (at most {limit} leave room for a response); refused alone",
                    prompt_tokens=count)
            else:
                keep.append(index)
        if keep:
            params = [self._vllm.SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                                                max_tokens=settings.max_new_tokens, seed=seeds[i],
                                                **self.model_sampling) for i in keep]
            started = time.perf_counter()
            outputs = self.llm.chat([conversations[i] for i in keep], params, use_tqdm=False,
                                    chat_template=self.chat_template)
            seconds = (time.perf_counter() - started) / max(1, len(outputs))
            for index, o in zip(keep, outputs):
                results[index] = Generation(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason or "",
                                            prompt_tokens=len(o.prompt_token_ids or []),
                                            completion_tokens=len(o.outputs[0].token_ids), seconds=seconds)
        return [r if r is not None else Generation(error="no output") for r in results]


@register("teacher", "vllm")
def load_vllm_teacher(spec: ModelSpec, **options: Any) -> VLLMTeacher:
    """Teacher loader for vllm: specs (engine options from the spec)."""
    return VLLMTeacher(spec, trust_remote_code=options.get("trust_remote_code", False))
