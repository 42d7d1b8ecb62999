"""rank before issue 21 (one dict per pair, per-row Python): the independent reference that
tests/test_rank_columns.py compares the columnar rank with, value for value. Copied from
src/teachfit/rank.py and pairs_needed.py as they were; the bootstrap draws all resamples at once."""
from __future__ import annotations

import math
import warnings
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from teachfit import metrics
from teachfit.rank import AVERAGED, Ranking, add_ranks
from teachfit.ranking_text import SETTLED, lacks
from teachfit.records import instruction_key
from teachfit.score_rows import column, group_by_teacher, number


def car_bootstrap(rewards, losses, beta, n_resamples=1000, seed=0):
    rng = np.random.default_rng(seed)
    draws = np.empty((n_resamples, len(rewards)))
    for j, (r, l) in enumerate(zip(rewards, losses)):
        idx = rng.integers(0, len(r), size=(n_resamples, len(r)))
        draws[:, j] = r[idx].mean(axis=1) / (1.0 + beta * l[idx].mean(axis=1))
    return draws


def _usable_rows(rows: Sequence[dict[str, Any]], beta: float) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows CAR can use, after refusing what cannot be ranked (bad beta, missing columns or
    values) and dropping pairs whose reward or loss is NaN or infinite (counted per teacher)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if not rows:
        raise ValueError("no scored pairs to rank")
    needs = {"teacher": "the scores have no 'teacher' column: were they written by `teachfit score`?",
             "reward": "the scores have no 'reward' column: score with --reward-model to compute CAR",
             "loss_self": "the scores have no 'loss_self' column: score with --student to compute the student's loss"}
    for name, message in needs.items():
        if not any(name in r for r in rows):
            raise ValueError(message)
        missing = [r for r in rows if r.get(name) is None or r.get(name) == ""]
        if missing:
            first = missing[0]
            hint = " (score every teacher with the same --reward-model)" if name == "reward" else ""
            raise ValueError(f"{len(missing)} of {len(rows)} pairs have no {name}{hint}: first pair "
                             f"{first.get('id')!r} of teacher {first.get('teacher')!r}")
    usable, dropped = [], {}
    for row in rows:
        if math.isfinite(number(row, "reward")) and math.isfinite(number(row, "loss_self")):
            usable.append(row)
        else:
            dropped[str(row["teacher"])] = dropped.get(str(row["teacher"]), 0) + 1
    if dropped:
        lost = sorted(set(dropped) - {str(r["teacher"]) for r in usable})
        if lost:
            raise ValueError(f"every pair of teacher(s) {', '.join(lost)} has a NaN or infinite reward or loss_self")
        warnings.warn(f"dropped {sum(dropped.values())} pairs with a NaN or infinite reward or loss_self "
                      f"({', '.join(f'{t}: {n}' for t, n in dropped.items())})", RuntimeWarning, stacklevel=3)
    return usable, dropped


def compared_rows(rows: Sequence[dict[str, Any]], shared_only: bool = True
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows to compare teachers on, and what each teacher covers: `coverage` holds the number
    of instructions any teacher answered, how many every teacher answered (`shared`) and how many
    each teacher lacks (`missing`). With `shared_only` the rows are those of the shared instructions
    (N samples of a teacher share their instruction: records.instruction_key), so that no teacher
    is compared on other instructions than another; nothing shared is then a ValueError."""
    keys: dict[str, set[str]] = {}
    for row in rows:
        keys.setdefault(str(row["teacher"]), set()).add(instruction_key(row))
    union = set().union(*keys.values()) if keys else set()
    shared = set.intersection(*keys.values()) if keys else set()
    coverage = {"instructions": len(union), "shared": len(shared),
                "missing": {t: len(union) - len(k) for t, k in keys.items()}, "shared_only": shared_only}
    if not shared_only or len(shared) == len(union):
        return list(rows), coverage
    if not shared:
        raise ValueError(f"no instruction is answered by every teacher ({lacks(coverage)}): give the teachers "
                         "the same instructions (the same ids), or rank with --no-shared-only to compare each "
                         "teacher on its own pairs")
    return [r for r in rows if instruction_key(r) in shared], coverage


def _rewards(groups: dict[str, list[dict[str, Any]]], transform: str) -> dict[str, np.ndarray]:
    raw = {t: column(g, "reward") for t, g in groups.items()}
    everything = np.concatenate(list(raw.values()))
    if np.any(np.isnan(everything)):
        raise ValueError("some pairs have no reward: score every teacher with the same --reward-model")
    negative = [t for t, r in raw.items() if r.mean() < 0]
    if negative and transform == "raw":
        warnings.warn(
            f"mean reward is negative for {', '.join(negative)}: CAR = r / (1 + beta L) then rewards higher loss; "
            "consider --reward-transform shift or sigmoid", RuntimeWarning, stacklevel=3)
    return {t: metrics.transform_rewards(r, transform, reference=everything) for t, r in raw.items()}


def _bootstrap(rewards: dict[str, np.ndarray], losses: dict[str, np.ndarray], beta: float, n: int, seed: int
               ) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    teachers = list(rewards)
    draws = car_bootstrap([rewards[t] for t in teachers], [losses[t] for t in teachers], beta, n, seed)
    intervals = {t: metrics.percentile_interval(draws[:, j]) for j, t in enumerate(teachers)}
    winners = np.argmax(draws, axis=1)
    shares = {t: float(np.mean(winners == j)) for j, t in enumerate(teachers)}
    return intervals, shares


def _table(groups: dict[str, list[dict[str, Any]]], rewards: dict[str, np.ndarray], losses: dict[str, np.ndarray],
           beta: float, student: str | None, kind: str, dropped: dict[str, int], coverage: dict[str, Any]
           ) -> list[dict[str, Any]]:
    """One row per group (a teacher or a selection) with its averaged metrics and CAR."""
    table = []
    for teacher, group in groups.items():
        row: dict[str, Any] = {"student": student or "student", "teacher": teacher, "kind": kind, "n_pairs": len(group)}
        for name in AVERAGED:
            if name in group[0]:
                values = column(group, name)
                row[name] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        for role in ("self", "ref"):  # a teacher's RSR: mean of per-pair mean ranks / mean of per-pair losses
            if f"mean_rank_{role}" in row and f"loss_{role}" in row:
                row[f"rsr_{role}"] = metrics.rsr(row[f"mean_rank_{role}"], row[f"loss_{role}"])
        row["reward_used"] = float(rewards[teacher].mean())
        row["L"] = float(losses[teacher].mean())
        row["car"] = metrics.car(row["reward_used"], row["L"], beta)
        if not math.isfinite(row["car"]):
            raise ValueError(f"CAR of {kind} {teacher!r} is not finite (mean reward {row['reward_used']}, L {row['L']})")
        row["n_dropped_nonfinite"] = dropped.get(teacher, 0)
        row["n_instructions_missing"] = coverage["missing"].get(teacher, 0)
        table.append(row)
    return table


def rank_teachers(
    rows: Sequence[dict[str, Any]], beta: float = 3.0, reward_transform: str = "raw",
    n_bootstrap: int = 1000, seed: int = 0, student: str | None = None, shared_only: bool = True,
    selections: Sequence[str] = (), target: float | None = None,
) -> Ranking:
    """Aggregate per-pair score rows into a ranked per-teacher table and a recommendation
    (`student` labels the rows, so rankings of several students can be correlated together).
    Teachers that cover different instructions (answers missing, skipped or dropped as non-finite)
    are compared on the instructions all of them share, or with `shared_only=False` each on its
    own pairs; settings["coverage"] and each row's `n_instructions_missing` say what each lacks.

    Rows whose `teacher` is one of `selections` are selections: ranked on their own pairs in
    Ranking.selections (`kind` = selection), with their CAR interval, but outside the
    recommendation, the coverage and the share of resamples on top (`top_share` NaN). When the
    recommended teacher is on top in fewer than SETTLED of the resamples, or a `target` is given,
    settings["pairs_needed"] holds the pairs_needed estimate (for `target`, else SETTLED)."""
    rows, dropped = _usable_rows(rows, beta)
    chosen = {str(s) for s in selections}
    selection_rows = [r for r in rows if str(r["teacher"]) in chosen]
    rows = [r for r in rows if str(r["teacher"]) not in chosen]
    if not rows:
        raise ValueError("no teacher to rank: every scored pair belongs to a selection")
    rows, coverage = compared_rows(rows, shared_only)
    groups = group_by_teacher(rows)
    rewards = _rewards(groups, reward_transform)
    losses = {t: column(g, "loss_self") for t, g in groups.items()}
    table = _table(groups, rewards, losses, beta, student, "teacher", dropped, coverage)
    intervals, shares = _bootstrap(rewards, losses, beta, n_bootstrap, seed) if n_bootstrap else ({}, {})
    for row in table:
        row["car_ci_low"], row["car_ci_high"] = intervals.get(row["teacher"], (math.nan, math.nan))
        row["top_share"] = shares.get(row["teacher"], math.nan)
    add_ranks(table)
    table.sort(key=lambda r: r["rank_car"])
    chosen_table: list[dict[str, Any]] = []
    if selection_rows:  # on the transform's reference of the teachers' rewards, each on its own pairs
        picked = group_by_teacher(selection_rows)
        everything = np.concatenate([column(g, "reward") for g in groups.values()])
        picked_rewards = {t: metrics.transform_rewards(column(g, "reward"), reward_transform, reference=everything)
                          for t, g in picked.items()}
        picked_losses = {t: column(g, "loss_self") for t, g in picked.items()}
        chosen_table = _table(picked, picked_rewards, picked_losses, beta, student, "selection", dropped,
                              {"missing": {}})
        picked_intervals = (_bootstrap(picked_rewards, picked_losses, beta, n_bootstrap, seed)[0]
                            if n_bootstrap else {})
        for row in chosen_table:
            row["car_ci_low"], row["car_ci_high"] = picked_intervals.get(row["teacher"], (math.nan, math.nan))
            row["top_share"] = math.nan
        chosen_table.sort(key=lambda r: -r["car"])
    best = table[0]["teacher"]
    settings = {"beta": beta, "reward_transform": reward_transform, "n_bootstrap": n_bootstrap, "seed": seed,
                "student": student, "dropped_nonfinite": sum(dropped.values()), "coverage": coverage,
                "settled": SETTLED, "selections": [r["teacher"] for r in chosen_table]}
    top_share = table[0]["top_share"]
    if len(table) > 1 and (target or (math.isfinite(top_share) and top_share < SETTLED)):
        settings["pairs_needed"] = pairs_needed(rows, beta, reward_transform, target or SETTLED,
                                                n_bootstrap=n_bootstrap or 1000, seed=seed)
    return Ranking(rows=table, recommended=best, top_share=top_share, settings=settings, selections=chosen_table)


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
    if not 0.0 < target < 1.0 or not 0.5 <= confidence < 1.0:
        raise ValueError(f"target must be in (0, 1) and confidence in [0.5, 1), got {target} and {confidence}")
    usable = [r for r in rows if r.get("reward") is not None and r.get("loss_self") is not None
              and math.isfinite(float(r["reward"])) and math.isfinite(float(r["loss_self"]))]
    groups = group_by_teacher(usable)
    if not groups:
        raise ValueError("no scored pairs with a reward and a loss_self")
    everything = np.array([float(r["reward"]) for r in usable])
    rewards = {t: metrics.transform_rewards(column(g, "reward"), reward_transform, reference=everything)
               for t, g in groups.items()}
    losses = {t: column(g, "loss_self") for t, g in groups.items()}
    teachers = list(groups)  # in order of appearance, as rank's own bootstrap
    cars = {t: metrics.car(float(rewards[t].mean()), float(losses[t].mean()), beta) for t in teachers}
    top = max(teachers, key=cars.__getitem__)  # ties: the first in order of appearance, as rank's own
    counts = {t: len(groups[t]) for t in teachers}
    out: dict[str, Any] = {"recommended": top, "n_pairs": counts, "target": target, "confidence": confidence,
                           "beta": beta, "reward_transform": reward_transform}
    if len(teachers) == 1:
        return out | {"top_share": 1.0, "pairs_needed": 1, "optimistic_pairs_needed": 1, "enough": True,
                      "limiting_teacher": None, "rivals": {}}
    draws = car_bootstrap([rewards[t] for t in teachers], [losses[t] for t in teachers], beta,
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


def selection_rows(run: Any, scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score rows of every selection in the run, relabelled with the selection's name, so that
    selections are ranked beside whole teachers. A torn or edited selection line is an InputError
    naming its file and line."""
    from teachfit.files import read_records
    from teachfit.records import InputError

    by_pair = {(str(r["teacher"]), str(r["id"])): r for r in scores}
    rows = []
    for path in run.selection_files():
        for line, record in read_records(path):
            if "teacher" not in record or "id" not in record:
                raise InputError(path, line, "not a selection record (it needs 'teacher' and 'id'): "
                                             "re-run `teachfit select` to write it again")
            row = by_pair.get((str(record["teacher"]), str(record["id"])))
            if row is not None:
                rows.append(dict(row, teacher=path.stem))
    return rows
