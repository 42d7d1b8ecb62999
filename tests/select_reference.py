"""select before issue 21's columnar select (one dict per pair, per-row Python): the independent
reference that tests/test_select_columns.py compares the columnar select_pairs with, as JSON text.
Copied from src/teachfit/select.py as it was (commit 6dbb957), unchanged below the imports."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from teachfit import metrics
from teachfit.records import instruction_key

METHODS = ("car", "car-instance", "grape", "persyn", "reward", "random")
NEEDS = {"car": ("reward", "loss_self"), "car-instance": ("reward", "loss_self"), "grape": ("loss_self",),
         "persyn": ("reward", "loss_self"), "reward": ("reward",), "random": ()}
SUMMARY_COLUMNS = ("reward", "loss_self", "length")


@dataclass
class Selection:
    """The chosen rows (score rows plus `instruction_id`, `selection_score`, `candidates`) and a summary."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def _value(row: dict[str, Any], name: str) -> float:
    value = row.get(name)
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.full(len(values), 0.5) if high == low else (values - low) / (high - low)


def _scores(method: str, candidates: list[dict[str, Any]], beta: float, transform: Any, alpha: float,
            rng: np.random.Generator, teacher_car: dict[str, float]) -> np.ndarray:
    """The selection score of each candidate of one instruction (larger is better)."""
    if method == "car":
        return np.array([teacher_car.get(str(r["teacher"]), -math.inf) for r in candidates])
    if method == "random":
        return rng.random(len(candidates))
    reward = np.array([_value(r, "reward") for r in candidates])
    loss = np.array([_value(r, "loss_self") for r in candidates])
    if method == "car-instance":
        return transform(reward) / (1.0 + beta * loss)
    if method == "grape":
        return -loss
    if method == "persyn":
        return (1.0 - alpha) * _minmax(reward) + alpha * _minmax(-loss)
    if method == "reward":
        return reward
    raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_pairs": len(rows)}
    for name in SUMMARY_COLUMNS:
        values = [v for v in (_value(r, name) for r in rows) if math.isfinite(v)]
        out[name] = float(np.mean(values)) if values else None
    return out


def select_pairs(rows: Sequence[dict[str, Any]], method: str, beta: float = 3.0, alpha: float = 0.4, seed: int = 0,
                 reward_transform: str = "raw", worst: bool = False) -> Selection:
    """One row per instruction chosen by `method` (see the module doc), with a summary: each
    teacher's share of the selection, mean reward / loss_self / length of the selection beside each
    single teacher's, and the instructions with no usable candidate (`missing`) or some
    (`partial`)."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if worst and method == "random":
        raise ValueError("worst=True has no meaning for random selection")
    if not rows:
        raise ValueError("no score rows to select from")
    needs = NEEDS[method]
    absent = [name for name in needs if not any(name in r for r in rows)]
    if absent:
        hint = " (score with --reward-model or --reward-column)" if "reward" in absent else ""
        raise ValueError(f"method {method!r} needs the column(s) {absent}, which the scores lack{hint}")
    # a candidate is usable when every value its method needs is a finite number; one whose value is
    # there but NaN or infinite is dropped and counted (one without the value is simply unscored)
    usable, nonfinite = [], {}
    for row in rows:
        if all(math.isfinite(_value(row, n)) for n in needs):
            usable.append(row)
        elif any(row.get(n) is not None for n in needs if not math.isfinite(_value(row, n))):
            nonfinite[str(row["teacher"])] = nonfinite.get(str(row["teacher"]), 0) + 1
    if not usable:
        raise ValueError(f"no score row has every column method {method!r} needs: {list(needs)}")

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(instruction_key(row), [])
    for row in usable:
        groups[instruction_key(row)].append(row)

    teacher_car: dict[str, float] = {}
    if method == "car":
        from teachfit.rank import rank_teachers

        # each teacher's CAR on its own pairs: the whole teacher is taken, whatever it answered
        ranking = rank_teachers(usable, beta=beta, reward_transform=reward_transform, n_bootstrap=0,
                                shared_only=False)
        cars = {row["teacher"]: row["car"] for row in ranking.rows}
        best = (min if worst else max)(cars.values())
        chosen = sorted(t for t, c in cars.items() if c == best)[0]
        teacher_car = {chosen: cars[chosen]}
    everything = np.array([_value(r, "reward") for r in usable]) if "reward" in needs else np.zeros(0)

    def transform(values: np.ndarray) -> np.ndarray:
        return metrics.transform_rewards(values, reward_transform, reference=everything)

    rng = np.random.default_rng(seed)
    selected, missing, partial = [], [], []
    counts = {key: 0 for key in groups}
    for row in rows:
        counts[instruction_key(row)] += 1
    for key, candidates in groups.items():
        candidates = sorted(candidates, key=lambda r: (str(r["teacher"]), str(r["id"])))
        if method == "car":
            candidates = [r for r in candidates if str(r["teacher"]) in teacher_car]
        if not candidates:
            missing.append(key)
            continue
        if len(candidates) < counts[key] and method != "car":
            partial.append(key)
        scores = _scores(method, candidates, beta, transform, alpha, rng, teacher_car)
        finite = np.isfinite(scores)
        if not finite.all():  # finite values can still give a non-finite score (1 + beta * loss = 0)
            for row in (r for r, ok in zip(candidates, finite) if not ok):
                nonfinite[str(row["teacher"])] = nonfinite.get(str(row["teacher"]), 0) + 1
            candidates, scores = [r for r, ok in zip(candidates, finite) if ok], scores[finite]
            if not candidates:
                missing.append(key)
                continue
            if key not in partial:
                partial.append(key)
        signed = -scores if worst else scores
        pick = 0
        for i in range(1, len(candidates)):  # strict comparison: ties stay with the first in name order
            if signed[i] > signed[pick]:
                pick = i
        selected.append(dict(candidates[pick], instruction_id=key, selection_score=float(scores[pick]),
                             candidates=len(candidates)))

    by_teacher: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_teacher.setdefault(str(row["teacher"]), []).append(row)
    share = {t: sum(str(r["teacher"]) == t for r in selected) / len(selected) if selected else 0.0
             for t in sorted(by_teacher)}
    summary = {
        "method": method, "settings": {"beta": beta, "alpha": alpha, "seed": seed, "reward_transform": reward_transform,
                                       "worst": worst},
        "n_instructions": len(groups), "n_selected": len(selected), "share": share,
        "selection": _means(selected),
        "teachers": {t: _means(g) | {"n_dropped_nonfinite": nonfinite.get(t, 0)} for t, g in sorted(by_teacher.items())},
        "missing": missing, "partial": partial, "dropped_nonfinite": sum(nonfinite.values()),
    }
    if method == "car":
        summary["car_teacher"], summary["car"] = next(iter(teacher_car.items()))
    return Selection(rows=selected, summary=summary)
