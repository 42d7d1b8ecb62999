"""Batches fill the token budget: a window's missing pairs are one computation (not 16-pair chunks),
and the progress bar still moves per forward batch."""
import random

from conftest import PAIRS
from teachfit import forward
from teachfit.config import ScoreConfig
from teachfit.forward import BatchPlan, plan_batches
from teachfit.models import load
from teachfit.records import Pair
from teachfit.score.engine import score_pairs
from teachfit.score.lm import LMScorer


def test_pairs_of_300_tokens_fill_a_16k_budget():
    rng = random.Random(0)
    lengths = [rng.randint(270, 330) for _ in range(512)]
    batches = plan_batches(lengths, BatchPlan(16384, 64))
    assert sorted(i for batch in batches for i in batch) == list(range(512))
    assert all(len(batch) >= 48 for batch in batches[:-1])  # the last one holds what is left
    assert all(len(batch) * max(lengths[i] for i in batch) <= 16384 for batch in batches)


class Bar:
    def __init__(self):
        self.updates, self.total = [], None

    def update(self, n):
        self.updates.append(n)

    def refresh(self):
        pass


def test_a_window_is_one_computation_with_batches_beyond_16_sequences(tmp_path, tiny_llama, monkeypatch):
    sizes = []

    def recording(lengths, plan):
        batches = plan_batches(lengths, plan)
        sizes.extend(len(b) for b in batches)
        return batches

    monkeypatch.setattr(forward, "plan_batches", recording)
    pairs = [Pair(id=f"p{i}", instruction=PAIRS[i % len(PAIRS)]["instruction"] + f" ({i})",
                  response=PAIRS[i % len(PAIRS)]["response"], teacher="t") for i in range(100)]
    options = ScoreConfig(dtype="float32", token_budget=1_000_000, max_batch_size=64)
    scorer = LMScorer(load("causal_lm", f"hf:{tiny_llama}", dtype="float32"), "self", options)
    bar = Bar()
    rows = list(score_pairs(pairs, [scorer], tmp_path / "cache", options, progress=bar))
    assert len(rows) == 100
    # 100 pairs, loss(y|x) and loss(y): 200 sequences, packed 64 a batch (16-pair chunks made at most 32)
    assert sorted(sizes) == [8, 64, 64, 64]
    assert sum(bar.updates) == 100 and len([n for n in bar.updates if n]) >= 4  # the bar moved per batch
    sizes.clear()
    bar = Bar()
    assert list(score_pairs(pairs, [scorer], tmp_path / "cache", options, progress=bar)) == rows  # all cached
    assert sizes == [] and sum(bar.updates) == 100


def test_a_bad_pair_in_a_window_is_skipped_and_the_rest_scored_once(tmp_path, tiny_llama):
    pairs = [Pair(id=f"p{i}", instruction=p["instruction"], response=p["response"], teacher="t", source=f"t.jsonl:{i + 1}")
             for i, p in enumerate(PAIRS)]
    pairs.insert(1, Pair(id="long", instruction="word " * 400, response="x", teacher="t", source="t.jsonl:9"))
    options = ScoreConfig(dtype="float32", max_length=64, skip_invalid=True)
    scorer = LMScorer(load("causal_lm", f"hf:{tiny_llama}", dtype="float32"), "self", options)
    skipped, bar = [], Bar()
    rows = list(score_pairs(pairs, [scorer], tmp_path / "cache", options, progress=bar, skipped=skipped))
    assert [r["id"] for r in rows] == [p.id for p in pairs if p.id != "long"]
    assert len(skipped) == 1 and skipped[0]["line"] == 9 and sum(bar.updates) == len(pairs)
