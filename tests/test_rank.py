"""Ranking: CAR per teacher against a hand computation, ranks, transforms, bootstrap."""
import math

import numpy as np
import pytest

from teachfit.rank import markdown_table, rank_teachers


def rows_for(teacher, rewards, losses, **extra):
    return [{"id": str(i), "teacher": teacher, "reward": r, "loss_self": l, "ppl_self": math.exp(l), **extra}
            for i, (r, l) in enumerate(zip(rewards, losses))]


def test_car_and_recommendation_match_hand_computation():
    # strong teacher: high reward but incompatible (high loss); medium teacher wins on CAR
    rows = rows_for("large", [8, 9, 10], [2.0, 2.5, 3.0]) + rows_for("medium", [6, 7, 8], [0.5, 0.6, 0.7])
    ranking = rank_teachers(rows, beta=3.0, n_bootstrap=200)
    by = {r["teacher"]: r for r in ranking.rows}
    assert by["large"]["car"] == pytest.approx(9 / (1 + 3 * 2.5))
    assert by["medium"]["car"] == pytest.approx(7 / (1 + 3 * 0.6))
    assert ranking.recommended == "medium" and ranking.top_share == 1.0
    assert by["large"]["rank_reward"] == 1 and by["medium"]["rank_car"] == 1
    assert by["medium"]["rank_ppl_self"] == 1  # lower perplexity ranks first
    assert by["medium"]["car_ci_low"] <= by["medium"]["car"] <= by["medium"]["car_ci_high"]
    # beta = 0 is plain average reward
    assert rank_teachers(rows, beta=0.0, n_bootstrap=0).recommended == "large"
    assert "Recommended teacher: medium" in markdown_table(ranking)


def test_negative_rewards_warn_and_shift_is_recorded():
    rows = rows_for("a", [-2.0, -1.0], [1.0, 1.0]) + rows_for("b", [1.0, 2.0], [1.0, 1.0])
    with pytest.warns(RuntimeWarning, match="negative"):
        rank_teachers(rows, n_bootstrap=0)
    ranking = rank_teachers(rows, reward_transform="shift", n_bootstrap=0)
    by = {r["teacher"]: r for r in ranking.rows}
    assert by["a"]["reward_used"] == pytest.approx(0.5)  # shifted by the global minimum -2
    assert by["b"]["reward_used"] == pytest.approx(3.5)
    assert ranking.settings["reward_transform"] == "shift"


def test_close_teachers_give_split_bootstrap():
    rng = np.random.default_rng(0)
    rows = rows_for("a", rng.normal(5, 1, 40), np.full(40, 1.0)) + rows_for("b", rng.normal(5, 1, 40), np.full(40, 1.0))
    ranking = rank_teachers(rows, n_bootstrap=500)
    assert 0.5 <= ranking.top_share < 0.99


def test_missing_reward_is_a_clear_error():
    with pytest.raises(ValueError, match="--reward-model"):
        rank_teachers([{"teacher": "a", "loss_self": 1.0}])
