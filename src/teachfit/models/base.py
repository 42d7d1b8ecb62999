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
