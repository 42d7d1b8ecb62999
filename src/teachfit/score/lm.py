"""Causal-LM scoring in process: loss(y|x), loss(y), PPL, IFD and RSR of each pair (columns
suffixed `_<role>`: `_self` for the student, `_ref` for the reference), the response length, and
THE rule of what a cached LM result depends on (`lm_key_material`, used by every LM scorer:
in process, served, vLLM).

Units: losses in nats per response token (lower: the model finds the response more likely);
PPL = exp(loss); IFD = loss(y|x) / loss(y) (lower: the instruction helps more); RSR = mean
clipped rank of the response tokens / loss(y|x) (teachfit.metrics.rsr); length in cl100k tokens.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from typing import Any, Callable, Iterator, Sequence

from teachfit import metrics
from teachfit.config import ScoreConfig
from teachfit.forward import response_nll
from teachfit.records import InputError, Pair
from teachfit.score.base import DeferredScorer
from teachfit.template import DEFAULT_TEMPLATE_NAME, encode_pair, encode_response_alone, ensure_chat_template
from teachfit.tokens import token_length

# Who hears of pairs done, batch by batch, while an LM scorer computes (the scoring engine's bar).
_PAIR_PROGRESS: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar("pair_progress", default=None)


@contextlib.contextmanager
def pair_progress(report: Callable[[int], None]) -> Iterator[None]:
    """Within this block, an LM scorer's compute calls `report(pairs)` after each forward batch
    with the pairs that batch completed (counted by the share of the tokens done), so a progress
    bar moves per batch while one call computes a whole window."""
    token = _PAIR_PROGRESS.set(report)
    try:
        yield
    finally:
        _PAIR_PROGRESS.reset(token)


SCORING_VERSION = 2  # bump when a computation changes, so old cache entries are not reused (2: RSR columns)


def lm_key_material(kind: str, identity: dict[str, Any], max_length: int, unconditional: bool = True,
                    role: str = "self") -> dict[str, Any]:
    """Everything a cached LM result depends on, known before the model loads: the scorer's kind
    ('lm' in process, 'lm-served', 'lm-vllm': never equal across kinds), the model's `identity`
    (the weights' fingerprint, which for a local folder covers its tokenizer files, hence its chat
    template; the dtype; a server's URL and kind...), teachfit's default template, the length
    limit in tokens, the scoring version, whether loss(y) was computed (results without it are
    cached apart), and the role unless 'self' (results hold role-named columns: one model as
    student and reference is cached twice; student keys stay what they were)."""
    material = {"kind": kind, "template": DEFAULT_TEMPLATE_NAME, **identity, "max_length": max_length,
                "version": SCORING_VERSION}
    material = material if unconditional else material | {"unconditional": False}
    return material if role == "self" else material | {"role": role}


class LMScorer:
    """loss(y|x), loss(y), PPL, IFD of each pair under one causal LM, columns suffixed `_<role>`."""

    def __init__(self, loaded: Any, role: str, options: ScoreConfig):
        self.loaded, self.role, self.options = loaded, role, options
        self.template_name = ensure_chat_template(loaded.tokenizer)
        self.tokens_done = 0
        self._encoding = threading.Lock()

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on."""
        return lm_key_material("lm", {"model": self.loaded.spec.fingerprint(), "dtype": self.loaded.dtype},
                               self.options.max_length, self.options.unconditional_for(self.role), self.role)

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records."""
        return {"role": self.role, "model": self.loaded.describe(), "template": self.template_name,
                "effective_max_length": self.max_length}

    @property
    def max_length(self) -> int:
        """--max-length, clamped to the model's positions (GPT-2: 1024) so long pairs are truncated, not fatal."""
        return self.loaded.clamp_length(self.options.max_length)

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """Per-pair losses (nats per response token) and the metrics derived from them."""
        return self._compute_encoded(pairs, self._encode(pairs))

    def prepare(self, pairs: Sequence[Pair]) -> list[Any]:
        """The pairs rendered and tokenized (encode_pairs): the CPU work before the forward pass,
        which the scoring engine does for the next window in a background thread."""
        return self._encode(pairs)

    def compute_prepared(self, pairs: Sequence[Pair], encoded: list[Any] | None) -> list[dict[str, Any]]:
        """compute(), with what prepare() returned (None: compute() as it stands)."""
        return self.compute(pairs) if encoded is None else self._compute_encoded(pairs, encoded)

    def _encode(self, pairs: Sequence[Pair]) -> list[Any]:
        # one thread at a time: a fast tokenizer called from two threads can fail ("Already borrowed")
        # when transformers resets its truncation settings, and a skipped pair's retry runs in the
        # main thread while the prefetch thread tokenizes the next window
        with self._encoding:
            return encode_pairs(self.loaded.tokenizer, pairs, self.max_length, self.options.unconditional_for(self.role))

    def _compute_encoded(self, pairs: Sequence[Pair], encoded: list[Any]) -> list[dict[str, Any]]:
        """Metric rows of prepared pairs, from the forward pass."""
        nll = self._forward(encoded, self._counter(len(pairs), encoded))
        return rows_from_nll(nll, [e.truncated for e in encoded[: len(pairs)]], self.role)

    def _forward(self, encoded: list[Any], on_batch: Callable[[int], None]) -> list[tuple[float, int, float]]:
        """Per sequence (sum of -log p of the response tokens in nats, their count, sum of clipped
        ranks), by torch (response_nll); a subclass with another engine overrides this."""
        return response_nll(self.loaded.model, self.loaded.tokenizer, encoded, self.options.plan,
                            self.loaded.device, on_batch=on_batch, ranks=True)

    def _counter(self, pairs: int, encoded: Sequence[Any]) -> Callable[[int], None]:
        """on_batch for response_nll: counts tokens, and reports pairs done to pair_progress."""
        report, total = _PAIR_PROGRESS.get(), sum(len(e.input_ids) for e in encoded) or 1
        done = {"tokens": 0, "pairs": 0}

        def count(tokens: int) -> None:
            self.tokens_done += tokens
            done["tokens"] += tokens
            now = pairs * done["tokens"] // total
            if report is not None and now > done["pairs"]:
                report(now - done["pairs"])
                done["pairs"] = now
        return count


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], max_length: int, unconditional: bool) -> list[Any]:
    """Each pair rendered by teachfit's template (template.encode_pair), then, when `unconditional`
    (loss(y): only IFD needs it, CAR does not), each response alone, in the same order. A prompt
    that leaves no room for the response is an InputError naming the pair."""
    conditional = []
    for pair in pairs:
        try:
            conditional.append(encode_pair(tokenizer, pair.instruction, pair.response, max_length))
        except ValueError as error:
            raise InputError(pair.source or pair.id, None, f"{error} (pair {pair.id})") from None
    alone = [encode_response_alone(tokenizer, pair.response, max_length) for pair in pairs] if unconditional else []
    return conditional + alone


def rows_from_nll(nll: Sequence[tuple[float, int, float]], truncated: Sequence[bool], role: str) -> list[dict[str, Any]]:
    """Metric rows of n pairs from (sum of -log p in nats, response tokens, sum of clipped ranks)
    per sequence: the first n are loss(y|x), any n more loss(y) in the same order (what every LM
    scorer computes: in-process, served, vLLM). A rank sum that is not finite (a server that
    reports no ranks) leaves RSR out."""
    n, suffix = len(truncated), "" if role == "self" else f"_{role}"
    rows = []
    for i in range(n):
        sum_c, n_c, ranks_c = nll[i]
        sum_u, n_u, _ = nll[n + i] if len(nll) > n else (math.nan, 0, 0)
        rank = ranks_c / n_c if math.isfinite(ranks_c) else None
        metrics = lm_metrics(sum_c / n_c, sum_u / n_u if n_u else math.nan, role, rank)
        if len(nll) == n:  # loss(y) not asked for: its columns are left out, not filled with NaN
            metrics = {k: v for k, v in metrics.items() if k not in (f"loss_{role}_uncond", f"ifd_{role}", f"ifd_loss_ratio_{role}")}
        rows.append(metrics | {f"n_response_tokens{suffix}": n_c, f"truncated{suffix}": truncated[i]})
    return rows


def lm_metrics(loss_conditional: float, loss_unconditional: float, role: str,
               mean_rank: float | None = None) -> dict[str, float]:
    """loss, loss_uncond, ppl, ifd, ifd_loss_ratio for one pair, suffixed `_<role>`; with the
    response tokens' mean clipped rank, also mean_rank and RSR = mean rank / loss(y|x)."""
    has_uncond = not math.isnan(loss_unconditional)
    ranked = {} if mean_rank is None else {f"mean_rank_{role}": mean_rank,
                                           f"rsr_{role}": metrics.rsr(mean_rank, loss_conditional)}
    return {
        f"loss_{role}": loss_conditional,
        f"loss_{role}_uncond": loss_unconditional,
        f"ppl_{role}": metrics.ppl(loss_conditional),
        f"ifd_{role}": metrics.ifd(loss_conditional, loss_unconditional) if has_uncond else math.nan,
        f"ifd_loss_ratio_{role}": metrics.ifd_loss_ratio(loss_conditional, loss_unconditional) if has_uncond else math.nan,
    } | ranked


class LengthScorer:
    """Response length in cl100k_base tokens (cheap; still cached like the others)."""

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on."""
        return {"kind": "length", "encoding": "cl100k_base"}

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records."""
        return {"kind": "length", "encoding": "cl100k_base"}

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """{'length': tokens} per pair."""
        return [{"length": token_length(p.response)} for p in pairs]


def deferred_lm(spec: Any, role: str, options: ScoreConfig) -> DeferredScorer:
    """An in-process LMScorer of a parsed hf:/gguf:/packaged: spec, loaded when a pair needs it."""
    from teachfit.models import load
    from teachfit.models.hf import dtype_name

    dtype = dtype_name(options.dtype, options.device)
    material = lm_key_material("lm", {"model": spec.fingerprint(), "dtype": dtype}, options.max_length,
                               options.unconditional_for(role), role)
    description = {"role": role, "model": {"spec": str(spec), "fingerprint": spec.fingerprint(), "dtype": dtype}}
    return DeferredScorer(material, description,
                          lambda: LMScorer(load("causal_lm", spec, **options.load_options()), role, options))
