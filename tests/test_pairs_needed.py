"""pairs_needed: how sure the recommendation is and how many pairs would make it sure, checked
in repeated simulation with a known truth (not optimistic)."""
import numpy as np
import pytest

from teachfit.pairs_needed import pairs_needed
from teachfit.rank import rank_teachers

BETA = 3.0
TRUTH = {"a": (6.0, 1.0), "b": (5.3, 0.95), "c": (5.0, 1.0)}  # mean reward, mean loss: CAR 1.5, 1.38, 1.25
SD_REWARD, SD_LOSS = 2.0, 0.3


def draw(rng, n):
    rows = []
    for teacher, (reward, loss) in TRUTH.items():
        r, l = rng.normal(reward, SD_REWARD, n), np.abs(rng.normal(loss, SD_LOSS, n))
        rows += [{"id": str(i), "teacher": teacher, "reward": float(x), "loss_self": float(y)} for i, (x, y) in enumerate(zip(r, l))]
    return rows


def true_top_share(rng, n, reps=300):
    """Share of fresh datasets of n pairs per teacher in which the truly best teacher ('a') has the top CAR."""
    cars = [rng.normal(r, SD_REWARD, (reps, n)).mean(1) / (1 + BETA * np.abs(rng.normal(l, SD_LOSS, (reps, n))).mean(1))
            for r, l in TRUTH.values()]
    return float(np.mean(np.argmax(np.stack(cars, 1), 1) == 0))


def test_estimate_is_not_optimistic_in_simulation():
    rng = np.random.default_rng(0)
    target = 0.9
    reached, reached_optimistic, undetermined, sizes = [], [], 0, []
    for k in range(60):
        estimate = pairs_needed(draw(rng, 100), beta=BETA, target=target, n_bootstrap=300, seed=k)
        if estimate["pairs_needed"] is None:
            undetermined += 1
            continue
        sizes.append(estimate["pairs_needed"])
        reached.append(true_top_share(rng, estimate["pairs_needed"]))
        reached_optimistic.append(true_top_share(rng, estimate["optimistic_pairs_needed"]))
    assert undetermined <= 30  # the estimate usually exists at 100 pairs per teacher
    assert np.mean(reached) >= target  # at the suggested size the true top is on top >= target of the time
    assert np.mean(reached_optimistic) < np.mean(reached)  # the observed gaps alone would promise too much
    assert true_top_share(rng, int(np.median(sizes)), 2000) >= target
    assert np.median(sizes) < 10 * 80  # and not absurdly conservative (about 80 pairs suffice here)


def test_report_fields_and_clear_cases():
    rng = np.random.default_rng(1)
    rows = draw(rng, 60)
    estimate = pairs_needed(rows, beta=BETA, n_bootstrap=200)
    assert estimate["recommended"] == rank_teachers(rows, beta=BETA, n_bootstrap=0).recommended
    assert 0.0 <= estimate["top_share"] <= 1.0 and estimate["n_pairs"] == {"a": 60, "b": 60, "c": 60}
    assert set(estimate["rivals"]) == set(TRUTH) - {estimate["recommended"]}
    for rival in estimate["rivals"].values():
        assert rival["gap_low"] < rival["car_gap"]
    # far apart: already enough; identical teachers: cannot be told apart, no size promised
    far = [dict(r, reward=r["reward"] + (20.0 if r["teacher"] == "a" else 0.0)) for r in rows]
    clear = pairs_needed(far, beta=BETA, n_bootstrap=200)
    assert clear["recommended"] == "a" and clear["enough"] and clear["pairs_needed"] <= 60 and clear["top_share"] == 1.0
    same = [dict(r, teacher=t) for r in rows if r["teacher"] == "a" for t in ("x", "y")]
    tied = pairs_needed(same, beta=BETA, n_bootstrap=200)
    assert tied["pairs_needed"] is None and not tied["enough"]
    with pytest.raises(ValueError, match="target"):
        pairs_needed(rows, target=1.0)
    with pytest.raises(ValueError, match="confidence"):  # checked before the rows are looked at
        pairs_needed([], confidence=0.3)
