"""select's arithmetic on columns (issue 21: 2M scored pairs): numpy arrays with one entry per pair,
no dict per pair. select.select_pairs puts them together.

The candidates of one instruction are laid side by side: sorted by instruction (in order of first
appearance), then teacher name, then pair id, then table order, which is the order in which
select chose (ties to the first) and drew random numbers when it worked on one instruction at a
time. A "run" below is the stretch of that order that holds one instruction's candidates; runs are
given by their start positions (`starts`, ascending, the first 0).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from teachfit.score_columns import ScoreColumns

SUMMARY_COLUMNS = ("reward", "loss_self", "length")


def given(columns: ScoreColumns, name: str) -> np.ndarray:
    """Per pair, whether it has a value in column `name` at all (not missing, not None / null);
    a NaN is a value (bool array)."""
    if columns.table is None:
        return np.fromiter((r.get(name) is not None for r in columns.rows), dtype=bool, count=len(columns))
    if name not in columns.table.column_names:
        return np.zeros(len(columns), dtype=bool)
    import pyarrow.compute as pc

    return np.asarray(pc.is_valid(columns.table.column(name)).to_numpy(zero_copy_only=False), dtype=bool)


def name_ranks(strings: list[str]) -> np.ndarray:
    """Each string's place in Python's order of strings (by code point), 0 first (int array)."""
    ranks = np.empty(len(strings), dtype=np.int64)
    ranks[sorted(range(len(strings)), key=strings.__getitem__)] = np.arange(len(strings))
    return ranks


def id_ranks(columns: ScoreColumns, pairs: np.ndarray) -> np.ndarray:
    """For the pairs at `pairs` (row indices), the place of str(id) among all the pairs' ids, in
    Python's order of strings (int array; equal ids share a place)."""
    codes, strings = columns.codes("id")
    return name_ranks(strings)[codes[pairs]]


def candidate_order(columns: ScoreColumns, among: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the row indices of the pairs in `among` (a bool mask) in candidate order (see the module doc),
    the instruction code of each, the start of each instruction's run)."""
    instruction, _ = columns.codes("instruction")
    teacher, names = columns.codes("teacher")
    pairs = np.flatnonzero(among)
    order = np.lexsort((id_ranks(columns, pairs), name_ranks(names)[teacher[pairs]], instruction[pairs]))  # stable
    pairs = pairs[order]
    return pairs, instruction[pairs], run_starts(instruction[pairs])


def run_starts(sorted_codes: np.ndarray) -> np.ndarray:
    """The positions where a new value begins in `sorted_codes` (equal values side by side)."""
    if not len(sorted_codes):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate(([True], sorted_codes[1:] != sorted_codes[:-1])))


def run_lengths(starts: np.ndarray, size: int) -> np.ndarray:
    """The length of each run, given the runs' starts and the total `size`."""
    return np.diff(np.append(starts, size))


def minmax_in_runs(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each value min-max normalised over its run into [0, 1]: (value - min) / (max - min); a run whose
    values are all equal gives 0.5 (select's PerSyn normalisation, computed as it computed it)."""
    lengths = run_lengths(starts, len(values))
    low = np.repeat(np.minimum.reduceat(values, starts), lengths) if len(values) else values
    high = np.repeat(np.maximum.reduceat(values, starts), lengths) if len(values) else values
    out = np.full(len(values), 0.5)
    spread = high != low
    out[spread] = (values[spread] - low[spread]) / (high[spread] - low[spread])
    return out


def selection_scores(method: str, columns: ScoreColumns, pairs: np.ndarray, starts: np.ndarray, beta: float,
                     alpha: float, transform: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator,
                     car: float) -> np.ndarray:
    """The selection score of each candidate at `pairs` (candidate order; larger is better):
    car: the chosen teacher's CAR; random: a uniform draw in [0, 1), drawn in candidate order;
    car-instance: transform(reward) / (1 + beta * loss_self); grape: -loss_self (nats per token,
    negated); persyn: (1 - alpha) * reward + alpha * (-loss_self), each min-max normalised over the
    instruction's candidates; reward: the reward. Non-finite scores stay (the caller drops them)."""
    if method == "car":
        return np.full(len(pairs), car)
    if method == "random":
        return rng.random(len(pairs))
    reward = columns.floats("reward")[0][pairs]
    loss = columns.floats("loss_self")[0][pairs]
    if method == "car-instance":
        return transform(reward) / (1.0 + beta * loss)
    if method == "grape":
        return -loss
    if method == "persyn":
        return (1.0 - alpha) * minmax_in_runs(reward, starts) + alpha * minmax_in_runs(-loss, starts)
    if method == "reward":
        return reward
    raise ValueError(f"unknown selection method {method!r}")


def first_best_in_runs(signed: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The position of the first largest of `signed` (finite values) in each run: ties go to the
    first in candidate order."""
    if not len(signed):
        return np.zeros(0, dtype=np.int64)
    best = np.repeat(np.maximum.reduceat(signed, starts), run_lengths(starts, len(signed)))
    top = np.flatnonzero(signed == best)
    run_of = np.searchsorted(starts, top, side="right") - 1
    return top[np.concatenate(([True], run_of[1:] != run_of[:-1]))]


def counts_by_teacher(columns: ScoreColumns, among: np.ndarray) -> dict[str, int]:
    """teacher -> the number of pairs of `among` (a bool mask) it has, teachers with none left out."""
    codes, names = columns.codes("teacher")
    counts = np.bincount(codes[among], minlength=len(names))
    return {names[c]: int(counts[c]) for c in np.flatnonzero(counts)}


def means(columns: ScoreColumns, pairs: np.ndarray) -> dict[str, Any]:
    """{n_pairs, and for reward, loss_self (nats per token) and length: the mean over the pairs at
    `pairs` (row indices, in that order) whose value is finite, or None when none is}."""
    out: dict[str, Any] = {"n_pairs": len(pairs)}
    for name in SUMMARY_COLUMNS:
        values = columns.floats(name)[0][pairs]
        values = values[np.isfinite(values)]
        out[name] = float(np.mean(values)) if len(values) else None
    return out


def teacher_pairs(columns: ScoreColumns) -> dict[str, np.ndarray]:
    """teacher -> the row indices of its pairs in table order, teachers in name order."""
    codes, names = columns.codes("teacher")
    order = np.argsort(codes, kind="stable")
    parts = np.split(order, np.cumsum(np.bincount(codes, minlength=len(names)))[:-1])
    return {names[c]: parts[c] for c in sorted(range(len(names)), key=names.__getitem__)}


def rows_at(columns: ScoreColumns, pairs: np.ndarray) -> list[dict[str, Any]]:
    """The pairs at `pairs` (row indices) as dicts: the rows themselves (not copies), or the table's rows."""
    if columns.table is None:
        return [columns.rows[int(i)] for i in pairs]
    return columns.table.take(np.asarray(pairs, dtype=np.int64)).to_pylist()


def rows_or_table_of(columns: ScoreColumns, among: np.ndarray) -> Any:
    """The pairs of `among` (a bool mask) in table order, as the columns were given: a list of the
    rows themselves, or a pyarrow.Table."""
    if columns.table is None:
        return [columns.rows[int(i)] for i in np.flatnonzero(among)]
    import pyarrow as pa

    return columns.table.filter(pa.array(among))
