"""Students and references on vLLM (extra [vllm]): loss(y|x), loss(y) and the RSR rank of each
pair from vLLM's prompt log-probabilities, as LMScorer's columns (the engine: models/vllm_backend.py).

Teachfit tokenizes each pair itself (template.encode_pair, the one
contract of response tokens), hands vLLM the token ids and asks for `prompt_logprobs` with
`max_tokens=1`. Two known traps are handled: requests with prompt log-probabilities do not use
the prefix cache, so the scorer's engine runs with enable_prefix_caching=False (nothing to gain,
memory to lose), and prompt log-probabilities materialize a (tokens x vocabulary) fp32 array per
engine step, so the scorer caps the step at max_num_batched_tokens (SCORE_STEP_TOKENS unless the
spec says otherwise) and hands vLLM at most call_token_budget(vocabulary) prompt tokens per call
(SCORE_CALL_ELEMENTS tokens x vocabulary). Pairs are cut to max_model_len - 1 tokens: vLLM refuses
a prompt of max_model_len when one token is to be generated.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec
from teachfit.models.vllm_backend import engine_kwargs, open_engine, prompt_token_limit
from teachfit.score.lm import encode_pairs, lm_key_material, rows_from_nll

SCORE_CALL_TOKENS = 262144    # prompt tokens per llm.generate call (host memory of the returned logprobs)
# Prompt log-probabilities are computed over the full vocabulary (a tokens x vocabulary fp32
# array, and its log-softmax, per engine step), memory that vLLM's profiling run does not
# reserve: 4,096 tokens of Gemma's 262k vocabulary are 4 GiB a copy, about 12 GB in all. Each
# llm.generate call holds at most SCORE_CALL_ELEMENTS tokens x vocabulary (1 GiB of fp32 a copy),
# so its engine steps, which only hold that call's prompts, stay within it. A single pair longer
# than the call budget goes alone, bounded by the step cap (max_num_batched_tokens, SCORE_STEP_TOKENS:
# set ?max_num_batched_tokens= lower for a large vocabulary). No GPU here: the memory figures are
# read from vLLM's design, the grouping is tested (call_token_budget, token_groups).
SCORE_CALL_ELEMENTS = 2**28
RANK_CLIP = 100               # RSR's rank clip (teachfit.forward counts the same way)


def call_token_budget(vocab_size: int | None, elements: int = SCORE_CALL_ELEMENTS) -> int:
    """Prompt tokens per llm.generate call: tokens x vocabulary within `elements`, and never more
    than SCORE_CALL_TOKENS (at least 1: a longer pair goes alone)."""
    if not vocab_size or vocab_size <= 0:
        return SCORE_CALL_TOKENS
    return max(1, min(SCORE_CALL_TOKENS, elements // int(vocab_size)))


def token_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices in order, grouped so that each group's total length stays within `budget` (a
    longer sequence goes alone)."""
    groups: list[list[int]] = []
    total = 0
    for index, length in enumerate(lengths):
        if not groups or total + length > budget:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += length
    return groups


def strict_rank(entry: dict[int, Any], target: int, listed: int) -> float:
    """teachfit's clipped rank of `target` (1 + the tokens strictly more likely, at most RANK_CLIP,
    as forward.py counts) from one position of vLLM's prompt_logprobs listing the top `listed`
    tokens and the target.

    vLLM's own `rank` counts ties against the target (vllm/v1/sample/ops/logprobs.py,
    batched_count_greater_than is `(x >= values).sum(-1)`), so under bf16 logits, where ties are
    common, it is larger than teachfit's. From the top RANK_CLIP tokens the strict rank is exact
    up to the clip: every token strictly above the target is listed unless RANK_CLIP of them are.
    (vLLM compares log-probabilities, forward.py logits: the log-softmax's rounding can make or
    break a tie between logits a few ulps apart; a CPU cannot show vLLM's side.) With fewer tokens
    listed the rank is unknown: NaN, and RSR is left out."""
    if listed < RANK_CLIP:
        return math.nan
    value = float(entry[target].logprob)
    above = sum(1 for token, item in entry.items() if token != target and float(item.logprob) > value)
    return float(min(RANK_CLIP, 1 + above))


def response_logprobs(prompt_logprobs: Sequence[Any], ids: Sequence[int], start: int,
                      listed: int = 0) -> tuple[float, int, float]:
    """(sum of NLL, tokens, sum of clipped ranks) over ids[start:] from one vLLM output's
    prompt_logprobs (one entry per prompt token, None first; each a {token id: Logprob} dict that
    holds the top `listed` tokens and the prompt token); ranks by strict_rank (NaN: RSR left out)."""
    nll, ranks, count = 0.0, 0.0, 0
    for position in range(max(1, start), len(ids)):
        entry = prompt_logprobs[position]
        nll -= float(entry[ids[position]].logprob)
        ranks += strict_rank(entry, ids[position], listed)
        count += 1
    return nll, count, ranks


class VLLMScorer:
    """loss(y|x), loss(y) (and the RSR rank) of each pair under a vllm: model, as LMScorer's columns."""

    def __init__(self, spec: ModelSpec, role: str, options: Any, trust_remote_code: bool = False):
        from teachfit.template import ensure_chat_template

        self.spec, self.role, self.options = spec, role, options
        self.engine = engine_kwargs(spec, trust_remote_code, scoring=True)
        self._vllm, self.llm = open_engine(self.engine)
        self.tokenizer = self.llm.get_tokenizer()
        self.template_name = ensure_chat_template(self.tokenizer)
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        # max_model_len - 1: vLLM refuses a prompt of max_model_len tokens (one token is generated)
        self.max_length = prompt_token_limit(options.max_length, getattr(model_config, "max_model_len", None))
        vocab = model_config.get_vocab_size() if hasattr(model_config, "get_vocab_size") else len(self.tokenizer)
        self.call_tokens = call_token_budget(vocab)
        # RSR's strict rank needs the top RANK_CLIP tokens of every position (100 log-probabilities a
        # token: `--metrics car` or no rsr column spares them); CAR and PPL need only the target's
        self.listed = RANK_CLIP if options.wants(f"rsr_{role}") else 0
        self.params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=self.listed,
                                                detokenize=False)

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records: the spec, the engine options, vLLM's version, the template."""
        return {"role": self.role, "model": {"spec": str(self.spec), "backend": "vllm", "engine": self.engine,
                                             "vllm": self._vllm.__version__, "tokenizer": "teachfit (token ids in)"},
                "rank": "strict (1 + tokens more likely, from the top 100), as teachfit counts",
                "template": self.template_name, "effective_max_length": self.max_length,
                "call_tokens": self.call_tokens}

    def _nll(self, encoded: Sequence[Any]) -> list[tuple[float, int, float]]:
        results: list[tuple[float, int, float]] = []
        for group in token_groups([len(e.input_ids) for e in encoded], self.call_tokens):
            prompts = [{"prompt_token_ids": list(encoded[i].input_ids)} for i in group]
            outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
            results += [response_logprobs(out.prompt_logprobs, encoded[i].input_ids, encoded[i].response_start,
                                          self.listed) for i, out in zip(group, outputs)]
        return results

    def compute(self, pairs: Sequence[Any]) -> list[dict[str, Any]]:
        """Per-pair losses (nats per response token) and the metrics derived from them."""
        encoded = encode_pairs(self.tokenizer, pairs, self.max_length, self.options.unconditional_for(self.role))
        return rows_from_nll(self._nll(encoded), [e.truncated for e in encoded[: len(pairs)]], self.role)


@register("lm_scorer", "vllm")
def load_vllm_scorer(spec: ModelSpec, lm_role: str, options: Any) -> VLLMScorer:
    """Student / reference scorer for vllm: specs."""
    return VLLMScorer(spec, lm_role, options, trust_remote_code=getattr(options, "trust_remote_code", False))


@register("lm_scorer_key", "vllm")
def vllm_key_material(spec: ModelSpec, options: Any, role: str) -> dict[str, Any]:
    """What a vllm: student's cached results depend on (known before vLLM loads): the spec with
    its engine options (dtype, quantization...), the template rule, the length limit, loss(y) or not."""
    return lm_key_material("lm-vllm", {"model": spec.fingerprint(), "spec": str(spec), "rank": "strict"},
                           options.max_length, options.unconditional_for(role), role)
