"""Evaluation metrics and verdict parsing against worked examples and independent computations."""
import math

import numpy as np
import pytest

from teachfit import metrics
from teachfit.evaluate.judging import JudgeConfig, parse_verdict, preference_for_first
from teachfit.models.judges import grammar_for


def test_win_rate_worked_example():
    wr, se = metrics.win_rate([1, 0, 0.5, 1])
    assert wr == pytest.approx(62.5)
    assert se == pytest.approx(100 * np.std([1, 0, 0.5, 1], ddof=1) / 2)


def simulate(gamma, theta, n, seed, psi=0.0):
    rng = np.random.default_rng(seed)
    model, base = rng.normal(1200, 400, n), rng.normal(900, 200, n)
    delta = model - base
    difficulty = rng.normal(0, 1, n)
    p = 1 / (1 + np.exp(-(gamma + theta * np.tanh(delta / delta.std()) + psi * difficulty)))
    return (rng.random(n) < p).astype(float), model, base, difficulty


def test_length_controlled_win_rate_removes_a_known_length_effect():
    prefs, model, base, _ = simulate(gamma=-1.0, theta=1.5, n=6000, seed=0)
    wr, _ = metrics.win_rate(prefs)
    lc, formula = metrics.length_controlled_win_rate(prefs, model, base)
    truth = 100 / (1 + math.exp(1.0))
    assert formula == "glm_without_instruction_term"
    assert abs(lc - truth) < 2.0 and wr - truth > 8  # raw WR is inflated by length, LC is not
    # no length effect: LC ~ WR
    prefs, model, base, _ = simulate(gamma=0.3, theta=0.0, n=6000, seed=1)
    assert metrics.length_controlled_win_rate(prefs, model, base)[0] == pytest.approx(metrics.win_rate(prefs)[0], abs=1.5)


def test_length_controlled_with_instruction_term():
    prefs, model, base, difficulty = simulate(gamma=0.5, theta=1.0, n=8000, seed=2, psi=1.2)
    lc, formula = metrics.length_controlled_win_rate(prefs, model, base, instruction_difficulty=difficulty)
    truth = 100 * np.mean(1 / (1 + np.exp(-(0.5 + 1.2 * difficulty))))
    assert formula == "glm_with_instruction_term" and abs(lc - truth) < 2.0


def test_arena_hard_worked_example_and_weights():
    # q1: model wins strongly then slightly: weights 3 and 1 -> 4/4; q2: tie, loss -> 0.5/2
    wr, low, high = metrics.arena_hard_win_rate([[1, 1], [0.5, 0]], [[3, 1], [1, 1]], n_resamples=200)
    assert wr == pytest.approx(100 * 4.5 / 6)
    assert low <= wr <= high


def test_arena_hard_bootstrap_interval_covers_the_true_rate():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        scores = (rng.random((80, 2)) < 0.3).astype(float)
        _, low, high = metrics.arena_hard_win_rate(scores.tolist(), np.ones((80, 2)).tolist(), n_resamples=300, seed=trial)
        covered += low <= 30.0 <= high
    assert covered >= 85  # nominal 95%


def test_average_performance():
    assert metrics.average_performance(16.09, 13.7) == pytest.approx(14.895)


# Only a bracketed verdict counts (issue 11): a bare "A>B" in prose is not the final answer.
@pytest.mark.parametrize("text,verdict", [
    ("My final verdict is: [[A>>B]]", "A>>B"), ("[[A>B]]", "A>B"), ("tie [[A=B]].", "A=B"), ("[[B>A]]", "B>A"),
    ("Clearly [[B>>A]]", "B>>A"), ("first [[A>B]] then on reflection [[B>A]]", "B>A"), ("[[A<B]]", "A<B"),
    ("Assistant A is better: A>B", None), ("I cannot decide", None), ("", None), ("[[C>D]]", None),
])
def test_parse_every_verdict_form(text, verdict):
    assert parse_verdict(text, JudgeConfig.load("arena_hard").verdict_pattern) == verdict


def test_preference_from_logprobs_and_text():
    reply = {"text": "A", "top_logprobs": {"A": math.log(0.6), " B": math.log(0.2), "C": math.log(0.2)}}
    assert preference_for_first(reply, ["A", "B"]) == pytest.approx(0.75)
    assert preference_for_first({"text": "B", "top_logprobs": {}}, ["A", "B"]) == 0.0
    assert preference_for_first({"text": "Hmm", "top_logprobs": {}}, ["A", "B"]) is None


def test_judge_configs_are_data():
    ae2, ah = JudgeConfig.load("alpaca_eval"), JudgeConfig.load("arena_hard")
    assert ae2.style == "preference" and ae2.choices == ["A", "B"]
    assert ah.strong_weight == 3 and len(ah.verdicts) == 5
    messages = ah.render("Q?", "first", "second")
    assert "Q?" in messages[0]["content"] and messages[0]["content"].index("first") < messages[0]["content"].index("second")
    assert grammar_for(ah.verdicts).startswith('root ::= "[[A>>B]]" | ')
