"""The one chooser of scorers: which scorers a ScoreConfig asks for, and which backend scores a
student or reference spec (in process, behind a server, on vLLM)."""
from __future__ import annotations

from typing import Any, Sequence

from teachfit.config import ScoreConfig
from teachfit.models.registry import LOADERS
from teachfit.models.spec import ModelSpec
from teachfit.score import served, vllm  # noqa: F401  (they register the lm_scorer loaders of openai: and vllm:)
from teachfit.score.base import DeferredScorer, Scorer
from teachfit.score.ctranslate2 import deferred_ct2
from teachfit.score.lm import LengthScorer, deferred_lm
from teachfit.score.reward import FileRewardScorer, deferred_reward


def lm_scorer(spec: str, role: str, config: ScoreConfig) -> DeferredScorer:
    """The LM scorer of `spec` for `role` ('self' or 'ref'), loaded when a pair needs it: served
    (openai:) and vLLM (vllm:) models by their own scorers, any other spec in process (torch, or
    CTranslate2 with `engine: ctranslate2`)."""
    parsed = ModelSpec.parse(spec)
    if parsed.prefix in LOADERS.get("lm_scorer", {}):
        material = LOADERS["lm_scorer_key"][parsed.prefix](parsed, config, role)
        description = {"role": role, "model": {"spec": str(parsed), "backend": parsed.prefix}}
        build = LOADERS["lm_scorer"][parsed.prefix]
        return DeferredScorer(material, description, lambda: build(parsed, lm_role=role, options=config))
    if config.engine == "ctranslate2":
        return deferred_ct2(parsed, role, config)
    return deferred_lm(parsed, role, config)


def build_scorers(student: str, config: ScoreConfig, sources: Sequence[Any] = ()) -> list[Scorer]:
    """The scorers `config.metrics` asks for: the student's LM pass (CAR, PPL, IFD, RSR), the
    reference's (config.reference), the reward (config.reward_model, or config.reward_column read
    from the `sources` files: no model runs), the length. Models load only when a pair needs them."""
    scorers: list[Any] = []
    if config.wants("car", "ppl_self", "ifd_self", "rsr_self"):  # `--metrics reward,length` needs no student pass
        scorers.append(lm_scorer(student, "self", config))
    if config.reference and config.wants("ppl_ref", "ifd_ref"):
        scorers.append(lm_scorer(config.reference, "ref", config))
    if config.reward_model and config.wants("car", "reward"):
        scorers.append(deferred_reward(config.reward_model, config.reward_kind, config))
    elif config.reward_column and config.wants("car", "reward"):
        scorers.append(FileRewardScorer(config.reward_column, sources))
    if config.wants("length"):
        scorers.append(LengthScorer())
    return scorers
