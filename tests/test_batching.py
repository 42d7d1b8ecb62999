"""Batches fill the token budget: a window's missing pairs are one computation (not 16-pair chunks),
and the progress bar still moves per forward batch."""
import random

import pytest

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
    pairs.insert(3, Pair(id="long2", instruction="word " * 400, response="x", teacher="t", source="hf-dataset:o/d:row 12"))
    options = ScoreConfig(dtype="float32", max_length=64, skip_invalid=True)
    scorer = LMScorer(load("causal_lm", f"hf:{tiny_llama}", dtype="float32"), "self", options)
    skipped, bar = [], Bar()
    rows = list(score_pairs(pairs, [scorer], tmp_path / "cache", options, progress=bar, skipped=skipped))
    assert [r["id"] for r in rows] == [p.id for p in pairs if not p.id.startswith("long")]
    assert [(s["path"], s["line"]) for s in skipped] == [("t.jsonl", 9), ("hf-dataset:o/d", 12)]  # a dataset's row too
    assert sum(bar.updates) == len(pairs)


def test_padding_and_response_positions_match_a_plain_loop():
    import random

    from teachfit.forward import _pad, _response_positions
    from teachfit.template import EncodedPair

    rng = random.Random(0)
    encoded = [EncodedPair(input_ids=[rng.randrange(50) for _ in range(n)], response_start=min(s, n), truncated=False)
               for n, s in ((5, 2), (1, 0), (9, 9), (7, 0), (3, 5))]
    ids, mask = _pad([e.input_ids for e in encoded], 99, "cpu")
    assert ids.tolist() == [e.input_ids + [99] * (9 - len(e.input_ids)) for e in encoded]
    assert mask.tolist() == [[1] * len(e.input_ids) + [0] * (9 - len(e.input_ids)) for e in encoded]
    rows, cols = _response_positions(encoded)
    expected = [(r, p) for r, e in enumerate(encoded) for p in range(max(e.response_start, 1) - 1, len(e.input_ids) - 1)]
    assert list(zip(rows.tolist(), cols.tolist())) == expected


def test_the_next_window_is_tokenized_while_this_one_computes(tmp_path, tiny_llama):
    import threading

    events, next_prepared = [], threading.Event()

    class Recording(LMScorer):  # the real scorer, noting which thread does what, and when
        def prepare(self, pairs):
            events.append(("prepare", pairs[0].id, threading.current_thread() is threading.main_thread()))
            if pairs[0].id == "p4":
                next_prepared.set()
            return super().prepare(pairs)

        def compute_prepared(self, pairs, encoded):
            if pairs[0].id == "p0":  # window 0's forward waits until window 1 is tokenized (or 30 s)
                assert next_prepared.wait(30), "window 1 was not prepared during window 0's forward"
            events.append(("compute", pairs[0].id, threading.current_thread() is threading.main_thread()))
            return super().compute_prepared(pairs, encoded)

    pairs = [Pair(id=f"p{i}", instruction=PAIRS[i % len(PAIRS)]["instruction"] + f" ({i})",
                  response=PAIRS[i % len(PAIRS)]["response"], teacher="t") for i in range(12)]
    options = ScoreConfig(dtype="float32", window=4)
    scorer = Recording(load("causal_lm", f"hf:{tiny_llama}", dtype="float32"), "self", options)
    rows = list(score_pairs(pairs, [scorer], tmp_path / "cache", options))
    plain = LMScorer(load("causal_lm", f"hf:{tiny_llama}", dtype="float32"), "self", options)
    assert [r["id"] for r in rows] == [p.id for p in pairs]
    # the same losses as one plain computation (other batches: equal up to fp32 rounding)
    assert [r["loss_self"] for r in rows] == pytest.approx([r["loss_self"] for r in plain.compute(pairs)], rel=1e-5)
    assert [e for e in events if e[0] == "prepare"] == [("prepare", f"p{i}", False) for i in (0, 4, 8)]
    assert [e for e in events if e[0] == "compute"] == [("compute", f"p{i}", True) for i in (0, 4, 8)]


def test_no_prefetch_scores_the_same_in_one_thread(tmp_path, tiny_llama):
    import threading

    pairs = [Pair(id=f"p{i}", instruction=PAIRS[i % len(PAIRS)]["instruction"] + f" ({i})",
                  response=PAIRS[i % len(PAIRS)]["response"], teacher="t") for i in range(40)]
    model = load("causal_lm", f"hf:{tiny_llama}", dtype="float32")
    threads_seen, rows = [], {}
    for prefetch in (True, False):
        options = ScoreConfig(dtype="float32", window=8, prefetch=prefetch)

        class Recording(LMScorer):  # notes the threads alive while a window computes
            def compute_prepared(self, chosen, prepared):
                threads_seen.append((prefetch, {t.name for t in threading.enumerate()}))
                return super().compute_prepared(chosen, prepared)

        rows[prefetch] = list(score_pairs(pairs, [Recording(model, "self", options)], tmp_path / f"c{prefetch}", options))
    assert rows[True] == rows[False] and len(rows[False]) == 40
    assert all("teachfit-prefetch" in names for on, names in threads_seen if on)
    assert not any("teachfit-prefetch" in names for on, names in threads_seen if not on)
    assert len(threads_seen) == 10
