"""RSR (Rank-Surprisal Ratio) against a plain full-logits loop, ties in logits included."""
import math

import pytest
import torch

from conftest import PAIRS
from teachfit import forward
from teachfit.models import load
from teachfit.rank import METRIC_DIRECTIONS, rank_teachers
from teachfit.records import Pair
from teachfit.config import ScoreConfig as ScoreOptions
from teachfit.score.lm import LMScorer
from teachfit.template import encode_pair, ensure_chat_template

PAIRS_X = [Pair(p["id"], p["instruction"], p["response"], "t") for p in PAIRS] + [
    Pair("e", "Give me advice on learning to code.", "Code every day, read code, and write small programs.", "t")]


def plain_ranks(model, ids, start):
    """Per response token: (rank = 1 + #logits strictly above the target's, unclipped; NLL; tied)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    out = []
    for t in range(start, len(ids)):
        row = logits[t - 1]
        target = row[ids[t]].item()
        above = sum(1 for v in row.tolist() if v > target)
        tied = sum(1 for v in row.tolist() if v == target) - 1
        out.append((1 + above, -torch.log_softmax(row.double(), dim=-1)[ids[t]].item(), tied))
    return out


@pytest.fixture
def tied_model(tiny_llama):
    """The tiny llama with some LM-head rows copied from response tokens' rows: exact logit ties."""
    loaded = load("causal_lm", f"hf:{tiny_llama}", dtype="float32")
    ensure_chat_template(loaded.tokenizer)
    head = loaded.model.get_output_embeddings().weight
    sample = encode_pair(loaded.tokenizer, PAIRS_X[0].instruction, PAIRS_X[0].response, 4096)
    targets = sample.input_ids[sample.response_start:]
    with torch.no_grad():
        for k, token in enumerate(targets[:4]):
            for copy in range(3):  # three extra tokens with exactly the target's row
                head[300 + 3 * k + copy] = head[token]
        head[targets[4]] *= -50.0  # a target pushed far down: its raw rank passes the clip
    return loaded


def test_rsr_matches_plain_full_logits_loop_with_ties(tied_model, monkeypatch):
    monkeypatch.setitem(forward.HEAD_CHUNK_ELEMENTS, "cpu", 7 * 400)  # several LM-head chunks per batch
    scorer = LMScorer(tied_model, "self", ScoreOptions(dtype="float32", token_budget=64, max_batch_size=3))
    rows = scorer.compute(PAIRS_X)
    ties = clipped = 0
    for pair, row in zip(PAIRS_X, rows):
        encoded = encode_pair(tied_model.tokenizer, pair.instruction, pair.response, 4096)
        tokens = plain_ranks(tied_model.model, encoded.input_ids, encoded.response_start)
        ties += sum(tied > 0 for _, _, tied in tokens)
        clipped += sum(rank > 100 for rank, _, _ in tokens)
        mean_rank = sum(min(rank, 100) for rank, _, _ in tokens) / len(tokens)
        mean_nll = sum(nll for _, nll, _ in tokens) / len(tokens)
        assert row["n_response_tokens"] == len(tokens)
        assert row["mean_rank_self"] == pytest.approx(mean_rank, abs=1e-12)
        assert row["loss_self"] == pytest.approx(mean_nll, abs=1e-4)
        assert row["rsr_self"] == pytest.approx(mean_rank / mean_nll, rel=1e-4)
    assert ties >= 4 and clipped >= 1  # the test exercised both ties and the clip


def test_response_nll_ranks_are_optional_and_do_not_change_the_loss(tied_model):
    tok = tied_model.tokenizer
    encoded = [encode_pair(tok, p.instruction, p.response, 4096) for p in PAIRS_X]
    plan = forward.BatchPlan(256, 4)
    plain = forward.response_nll(tied_model.model, tok, encoded, plan, tied_model.device)
    ranked = forward.response_nll(tied_model.model, tok, encoded, plan, tied_model.device, ranks=True)
    assert all(len(p) == 2 and len(r) == 3 for p, r in zip(plain, ranked))
    assert [p[:2] for p in ranked] == plain
    assert all(e_n <= r <= 100 * e_n for (_, e_n, r) in ranked)


def test_teacher_rsr_is_ratio_of_means_and_ranks_lower_first():
    rows = []
    data = {"a": [(2.0, 1.0), (6.0, 2.0)], "b": [(30.0, 1.5), (10.0, 0.5)]}
    for teacher, values in data.items():
        for i, (rank, loss) in enumerate(values):
            rows.append({"id": str(i), "teacher": teacher, "reward": 5.0, "loss_self": loss,
                         "mean_rank_self": rank, "rsr_self": rank / loss})
    ranking = rank_teachers(rows, n_bootstrap=0)
    by = {r["teacher"]: r for r in ranking.rows}
    assert by["a"]["rsr_self"] == pytest.approx((2 + 6) / 2 / ((1.0 + 2.0) / 2))  # not the mean of per-pair RSR
    assert by["b"]["rsr_self"] == pytest.approx((30 + 10) / 2 / ((1.5 + 0.5) / 2))
    assert METRIC_DIRECTIONS["rsr_self"] == -1 and by["a"]["rank_rsr_self"] == 1 and by["b"]["rank_rsr_self"] == 2
    assert not math.isnan(by["a"]["mean_rank_self"])
