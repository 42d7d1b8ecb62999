"""How sure a recommendation is, and how many pairs per teacher would make it sure (rank --target)."""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from teachfit import metrics
from teachfit.score_rows import column, group_by_teacher


def pairs_needed(
    rows: Sequence[dict[str, Any]], beta: float = 3.0, reward_transform: str = "raw", target: float = 0.95,
    confidence: float = 0.8, n_bootstrap: int = 1000, seed: int = 0, max_pairs: int = 10_000_000,
) -> dict[str, Any]:
    """How sure the recommendation is, and how many pairs per teacher would keep the recommended
    teacher on top in a `target` share of samples.

    The bootstrap (each teacher's pairs resampled) gives the share of resamples in which the
    recommended teacher is on top now, and each teacher's CAR standard error, hence a per-pair
    spread sigma_j = se_j * sqrt(n_j). With n pairs per teacher the top teacher t beats rival j
    with probability about Phi(gap_j / sqrt((sigma_t^2 + sigma_j^2) / n)), and beats all of them
    with at least the product (the events share t's noise, so they correlate positively). The
    observed gap is the largest of several noisy gaps and so too large on average (the winner's
    curse); the estimate uses its lower confidence bound gap_j - z(confidence) * se(gap_j) instead,
    so that it is not optimistic. Teachers are resampled independently: on shared instructions the
    real spread of a gap is smaller, which again errs on the safe side. When some rival is not yet
    separated (its lower bound <= 0), `pairs_needed` is None and `optimistic_pairs_needed` (from
    the observed gaps, a lower bound on what is needed) says at least how far there is to go.
    """
    usable = [r for r in rows if r.get("reward") is not None and r.get("loss_self") is not None
              and math.isfinite(float(r["reward"])) and math.isfinite(float(r["loss_self"]))]
    groups = group_by_teacher(usable)
    return pairs_needed_of({t: column(g, "reward") for t, g in groups.items()},
                           {t: column(g, "loss_self") for t, g in groups.items()}, beta, reward_transform, target,
                           confidence, n_bootstrap, seed, max_pairs)


def pairs_needed_of(
    raw_rewards: dict[str, np.ndarray], losses: dict[str, np.ndarray], beta: float = 3.0,
    reward_transform: str = "raw", target: float = 0.95, confidence: float = 0.8, n_bootstrap: int = 1000,
    seed: int = 0, max_pairs: int = 10_000_000, draws: tuple[list[str], np.ndarray] | None = None,
) -> dict[str, Any]:
    """pairs_needed of each teacher's finite rewards (untransformed) and losses, by teacher.
    Teachers are resampled in the order given (the bootstrap's draws depend on it), and of teachers
    with equal CAR the first in that order is recommended (as rank does). `draws`: (teachers, their
    (max(n_bootstrap, 2), teachers) CAR bootstrap of these rewards (transformed) and losses with this
    beta and seed, a column per teacher in that order), when the caller took it already (rank: one
    bootstrap serves its intervals and this estimate, so their shares on top agree); draws of other
    teachers, order or shape are drawn again."""
    if not 0.0 < target < 1.0 or not 0.5 <= confidence < 1.0:
        raise ValueError(f"target must be in (0, 1) and confidence in [0.5, 1), got {target} and {confidence}")
    if not raw_rewards:
        raise ValueError("no scored pairs with a reward and a loss_self")
    everything = np.concatenate(list(raw_rewards.values()))
    rewards = {t: metrics.transform_rewards(r, reward_transform, reference=everything) for t, r in raw_rewards.items()}
    teachers = list(raw_rewards)
    cars = {t: metrics.car(float(rewards[t].mean()), float(losses[t].mean()), beta) for t in teachers}
    top = max(teachers, key=cars.__getitem__)  # ties: the first in the order given
    counts = {t: len(raw_rewards[t]) for t in teachers}
    out: dict[str, Any] = {"recommended": top, "n_pairs": counts, "target": target, "confidence": confidence,
                           "beta": beta, "reward_transform": reward_transform}
    if len(teachers) == 1:
        return out | {"top_share": 1.0, "pairs_needed": 1, "optimistic_pairs_needed": 1, "enough": True,
                      "limiting_teacher": None, "rivals": {}}
    if draws is not None and list(draws[0]) == teachers and draws[1].shape == (max(n_bootstrap, 2), len(teachers)):
        draws = draws[1]
    else:
        draws = metrics.car_bootstrap([rewards[t] for t in teachers], [losses[t] for t in teachers], beta,
                                      max(n_bootstrap, 2), seed)
    se = {t: float(draws[:, j].std(ddof=1)) for j, t in enumerate(teachers)}
    top_share = float(np.mean(np.argmax(draws, axis=1) == teachers.index(top)))
    z = NormalDist().inv_cdf(confidence)
    rivals = {}
    for teacher in teachers:
        if teacher == top:
            continue
        gap = cars[top] - cars[teacher]
        gap_se = math.sqrt(se[top] ** 2 + se[teacher] ** 2)
        per_pair_var = se[top] ** 2 * counts[top] + se[teacher] ** 2 * counts[teacher]
        rivals[teacher] = {"car_gap": gap, "gap_se": gap_se, "gap_low": gap - z * gap_se, "per_pair_var": per_pair_var}

    def solve(gap_key: str) -> tuple[int | None, str | None]:
        gaps = {t: v[gap_key] for t, v in rivals.items()}
        if any(g <= 0 for g in gaps.values()):
            return None, min(gaps, key=gaps.get)
        if all(v["per_pair_var"] == 0 for v in rivals.values()):
            return 1, None

        def share(n: int) -> float:
            return math.prod(NormalDist().cdf(gaps[t] / math.sqrt(v["per_pair_var"] / n)) if v["per_pair_var"] else 1.0
                             for t, v in rivals.items())

        high = 1
        while share(high) < target:
            high *= 2
            if high > max_pairs:
                return None, min(gaps, key=lambda t: gaps[t] / math.sqrt(rivals[t]["per_pair_var"] or 1.0))
        low = high // 2
        while high - low > 1:  # smallest n with share(n) >= target
            middle = (low + high) // 2
            low, high = (low, middle) if share(middle) >= target else (middle, high)
        limiting = min(gaps, key=lambda t: gaps[t] / math.sqrt(rivals[t]["per_pair_var"] or 1.0))
        return high, limiting

    needed, limiting = solve("gap_low")
    optimistic, _ = solve("car_gap")
    return out | {"top_share": top_share, "pairs_needed": needed, "optimistic_pairs_needed": optimistic,
                  "enough": needed is not None and needed <= min(counts.values()), "limiting_teacher": limiting,
                  "rivals": {t: {k: v for k, v in r.items() if k != "per_pair_var"} for t, r in rivals.items()}}
