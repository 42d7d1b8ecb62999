"""Rewards r(x, y): a sequence-classification reward model, or a generative judge's expected rating.

The generative judge is asked for a rating from 1 to 9; its reward is the expectation of the
rating under the model's next-token distribution restricted to the digit tokens "1".."9"
(probability-weighted digits), so it is continuous and needs one forward pass per pair.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

from teachfit.env import shipped_text
from teachfit.forward import BatchPlan, next_token_logprobs, sequence_scores
from teachfit.records import InputError, Pair
from teachfit.score.base import DeferredScorer
from teachfit.template import DEFAULT_TEMPLATE_NAME, ensure_chat_template

RATINGS = tuple(range(1, 10))


def judge_prompt_template() -> str:
    """The generative judge's rating prompt (a data file, so it can be read and changed)."""
    return shipped_text("prompts/reward_judge.txt")


def expected_rating(logprobs: Sequence[float], ratings: Sequence[int] = RATINGS) -> float:
    """Expectation of the rating under the distribution renormalized over the rating tokens."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    return sum(w * r for w, r in zip(weights, ratings)) / sum(weights)


def _clip_to_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]) + " [...]"


class JudgeReward:
    """Reward from an instruct model rating each response 1-9 (higher is better)."""

    kind = "generative_judge"

    def __init__(self, loaded: Any, plan: BatchPlan, max_length: int = 4096):
        self.loaded, self.plan, self.max_length = loaded, plan, max_length
        self.template_name = ensure_chat_template(loaded.tokenizer)
        self.prompt = judge_prompt_template()
        self.rating_ids = [self._single_token(str(r)) for r in RATINGS]

    def _single_token(self, text: str) -> int:
        ids = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"judge tokenizer splits the rating '{text}' into {len(ids)} tokens; use another judge")
        return int(ids[0])

    def key_material(self) -> dict[str, Any]:
        """Everything a cached reward depends on."""
        return reward_key_material(self.kind, self.loaded.spec.fingerprint(), self.loaded.dtype, self.max_length)

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records."""
        return {"kind": self.kind, "model": self.loaded.describe(), "template": self.template_name,
                "ratings": list(RATINGS), "prompt_file": "teachfit/data/prompts/reward_judge.txt"}

    def _prompt_ids(self, pair: Pair) -> list[int]:
        tokenizer = self.loaded.tokenizer
        budget = max(64, (self.loaded.clamp_length(self.max_length) - 256) // 2)
        text = self.prompt.format(
            instruction=_clip_to_tokens(tokenizer, pair.instruction, budget),
            response=_clip_to_tokens(tokenizer, pair.response, budget),
        )
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """{'reward': expected rating in [1, 9]} per pair."""
        prompts = [self._prompt_ids(p) for p in pairs]
        logprobs = next_token_logprobs(
            self.loaded.model, self.loaded.tokenizer, prompts, self.rating_ids, self.plan, self.loaded.device
        )
        return [{"reward": expected_rating(lp), "reward_rating_mass": sum(math.exp(x) for x in lp)} for lp in logprobs]


class SequenceClassifierReward:
    """Reward from a sequence-classification reward model's scalar output (Skywork, ArmoRM)."""

    kind = "sequence_classifier"

    def __init__(self, loaded: Any, plan: BatchPlan, max_length: int = 4096):
        self.loaded, self.plan, self.max_length = loaded, plan, max_length
        self.template_name = ensure_chat_template(loaded.tokenizer)

    def key_material(self) -> dict[str, Any]:
        """Everything a cached reward depends on."""
        return reward_key_material(self.kind, self.loaded.spec.fingerprint(), self.loaded.dtype, self.max_length)

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records."""
        return {"kind": self.kind, "model": self.loaded.describe(), "template": self.template_name}

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """{'reward': the model's scalar} per pair (its scale is the model's own)."""
        tokenizer = self.loaded.tokenizer
        sequences = []
        for pair in pairs:
            messages = [{"role": "user", "content": pair.instruction}, {"role": "assistant", "content": pair.response}]
            rendered = tokenizer.apply_chat_template(messages, tokenize=False)
            sequences.append(list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
                             [: self.loaded.clamp_length(self.max_length)])
        scores = sequence_scores(self.loaded.model, tokenizer, sequences, self.plan, self.loaded.device)
        return [{"reward": s} for s in scores]


def reward_key_material(kind: str, fingerprint: str, dtype: str, max_length: int) -> dict[str, Any]:
    """Everything a cached reward depends on, known before the model loads (the judge's prompt
    file is part of it; a local folder's fingerprint covers its tokenizer and template)."""
    material = {"kind": kind, "model": fingerprint, "dtype": dtype, "template": DEFAULT_TEMPLATE_NAME,
                "max_length": max_length}
    if kind == JudgeReward.kind:
        material["prompt"] = judge_prompt_template()
    return material


def resolve_kind(parsed: Any, kind: str, trust_remote_code: bool = False) -> str:
    """'classifier' or 'judge' for `kind` ('auto': a classifier when the model's config says so)."""
    if kind == "auto":
        kind = "classifier" if _is_classifier(parsed, trust_remote_code) else "judge"
    if kind not in ("classifier", "judge"):
        raise ValueError(f"unknown reward kind {kind!r}: use auto, classifier or judge")
    return kind


def deferred_reward(spec: str, kind: str, options: Any) -> Any:
    """A reward scorer (DeferredScorer) whose model loads only when a pair needs it; `options` is a ScoreConfig."""
    from teachfit.models import ModelSpec
    from teachfit.models.hf import dtype_name

    parsed = ModelSpec.parse(spec)
    kind = resolve_kind(parsed, kind, options.trust_remote_code)
    dtype = dtype_name(options.dtype, options.device)
    scorer_kind = SequenceClassifierReward.kind if kind == "classifier" else JudgeReward.kind
    material = reward_key_material(scorer_kind, parsed.fingerprint(), dtype, options.max_length)
    description = {"kind": scorer_kind, "model": {"spec": str(parsed), "fingerprint": parsed.fingerprint(), "dtype": dtype}}
    return DeferredScorer(material, description, lambda: load_reward(
        spec, kind, options.plan, options.max_length, **options.load_options()))


def load_reward(spec: str, kind: str, plan: BatchPlan, max_length: int, **load_options: Any) -> Any:
    """A reward scorer: kind 'classifier' (sequence-classification RM), 'judge' (generative)
    or 'auto' (a classifier when the model's config says so, else a judge)."""
    from teachfit.models import ModelSpec, load

    parsed = ModelSpec.parse(spec)
    kind = resolve_kind(parsed, kind, load_options.get("trust_remote_code", False))
    if kind == "classifier":
        return SequenceClassifierReward(load("sequence_classifier", parsed, **load_options), plan, max_length)
    return JudgeReward(load("causal_lm", parsed, **load_options), plan, max_length)


def _is_classifier(spec: Any, trust_remote_code: bool) -> bool:
    if spec.prefix != "hf":
        return False
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.name, trust_remote_code=trust_remote_code)
    return any("SequenceClassification" in a or "RewardModel" in a for a in (config.architectures or []))


class FileRewardScorer:
    """Reward taken from the input file (`read_pairs(..., reward_column=NAME)` puts the column's
    value in `pair.extra["reward"]`), so no reward model runs: e.g. the Skywork scores that ship
    with Magpie-100K-Generator-Zoo.

    Not cached (`cached` False): the engine reads the value as it assembles the rows, which costs
    less than a pass of its own and a cache line a pair (2M lines at the paper's scale). The key
    material (the column, the `sources` files' path, size and mtime) still says what was read.
    """

    kind = "file_column"
    cached = False  # the value is on the pair already (score.base.is_cached): no pass or cache of its own

    def __init__(self, column: str, sources: Sequence[Any] = ()):
        self.column = column
        self.sources = [str(s) for s in sources]

    def _fingerprint(self) -> list[Any]:
        out = []
        for source in self.sources:
            try:
                stat = os.stat(source)
                out.append([source, stat.st_size, stat.st_mtime_ns])
            except OSError:
                out.append([source, None, None])
        return out

    def key_material(self) -> dict[str, Any]:
        """Everything a cached reward depends on: the column and the files it is read from."""
        return {"kind": self.kind, "column": self.column, "sources": self._fingerprint()}

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records."""
        return {"kind": self.kind, "column": self.column, "sources": self.sources}

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """{'reward': the file's value} per pair; a pair read without the column is an error."""
        rows = []
        for pair in pairs:
            value = pair.extra.get("reward")
            if value is None:
                raise InputError(pair.source or pair.id, None,
                                 f"no reward from column '{self.column}' (read the pairs with reward_column='{self.column}')")
            rows.append({"reward": float(value)})
        return rows
