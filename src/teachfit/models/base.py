"""What every teacher backend takes and returns."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of one dataset (temperature 0 means greedy decoding)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0
    n: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for records (Magpie's gen_response_configs)."""
        return asdict(self)

    def sample_seed(self, instruction_id: str, sample: int) -> int:
        """A per-(instruction, sample) seed, independent of order and of interruptions."""
        digest = hashlib.sha256(f"{self.seed}:{instruction_id}:{sample}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Generation:
    """One response (or the error that prevented it)."""

    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


def user_messages(instruction: str) -> Messages:
    """The conversation a teacher is asked to continue: one user turn."""
    return [{"role": "user", "content": instruction}]


# The sampling settings a model's generation_config.json may carry beyond teachfit's own
# (temperature, top_p, max_new_tokens: GenerationSettings, recorded as gen_response_configs), with
# the value that turns each off. transformers' generate() applies the model's generation_config
# on its own (repetition_penalty even when decoding greedily); vLLM reads it only for
# LLM.get_default_sampling_params(), used when no SamplingParams are given (vllm/entrypoints/
# llm.py; ModelConfig.get_diff_sampling_param reads repetition_penalty, temperature, top_k, top_p,
# min_p, max_new_tokens), so a teacher given SamplingParams samples without them. Teachfit reads
# them itself and applies the same ones on hf: and vllm: (HFTeacher, VLLMTeacher), recorded in
# each answer's backend description as `model_sampling`.
MODEL_SAMPLING_FIELDS = {"repetition_penalty": 1.0, "top_k": 0, "min_p": 0.0}


def model_sampling_defaults(generation_config: Any) -> dict[str, Any]:
    """The settings of MODEL_SAMPLING_FIELDS that a model's generation config (a transformers
    GenerationConfig, a dict, or None) sets to something other than off. Only what the file sets
    counts (GenerationConfig.to_diff_dict, as vLLM reads it), so transformers' own defaults
    (top_k 50 before transformers 5) are not taken for the model's."""
    if generation_config is None:
        return {}
    if isinstance(generation_config, dict):
        values = generation_config
    elif hasattr(generation_config, "to_diff_dict"):
        values = generation_config.to_diff_dict()
    else:
        values = vars(generation_config)
    chosen: dict[str, Any] = {}
    for name, off in MODEL_SAMPLING_FIELDS.items():
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value == off:
            continue
        if name == "top_k" and value < 0:  # vLLM's -1: off
            continue
        chosen[name] = int(value) if name == "top_k" else float(value)
    return chosen
