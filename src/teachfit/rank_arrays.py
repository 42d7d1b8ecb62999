"""rank's arithmetic on columns (score_columns.ScoreColumns): which pairs CAR can use, which
instructions every teacher answered, each teacher's pairs (an index array, in table order) and its
row of averaged metrics. Whole-column numpy operations, so that millions of pairs rank in seconds;
each teacher's values are gathered in table order before they are averaged, so every mean is the
one the per-row code took (the same numbers, summed in the same order)."""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from teachfit import metrics
from teachfit.ranking_text import lacks
from teachfit.score_columns import ScoreColumns

AVERAGED = ("reward", "loss_self", "loss_self_uncond", "ppl_self", "ifd_self", "ifd_loss_ratio_self",
            "loss_ref", "loss_ref_uncond", "ppl_ref", "ifd_ref", "ifd_loss_ratio_ref", "length", "n_response_tokens",
            "mean_rank_self", "mean_rank_ref")
NEEDS = {"teacher": "the scores have no 'teacher' column: were they written by `teachfit score`?",
         "reward": "the scores have no 'reward' column: score with --reward-model to compute CAR",
         "loss_self": "the scores have no 'loss_self' column: score with --student to compute the student's loss"}


def usable_pairs(columns: ScoreColumns, beta: float) -> tuple[np.ndarray, dict[str, int]]:
    """(per pair, whether CAR can use it; pairs dropped per teacher, in order of the first drop),
    after refusing what cannot be ranked (bad beta, missing columns or values, a value that is not a
    number) and dropping pairs whose reward or loss is NaN or infinite."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if not len(columns):
        raise ValueError("no scored pairs to rank")
    for name, message in NEEDS.items():
        if not columns.has(name):
            raise ValueError(message)
        blank = columns.blank(name)
        if blank.any():
            first = columns.row(int(np.argmax(blank)))
            hint = " (score every teacher with the same --reward-model)" if name == "reward" else ""
            raise ValueError(f"{int(blank.sum())} of {len(columns)} pairs have no {name}{hint}: first pair "
                             f"{first.get('id')!r} of teacher {first.get('teacher')!r}")
    reward, reward_bad = columns.floats("reward")
    loss, loss_bad = columns.floats("loss_self")
    finite = np.isfinite(reward)
    bad = np.zeros(len(columns), dtype=bool) if reward_bad is None else reward_bad.copy()
    if loss_bad is not None:
        bad |= finite & loss_bad  # the loss of a pair without a finite reward is never read
    if bad.any():
        first = int(np.argmax(bad))
        columns.raise_bad("reward" if reward_bad is not None and reward_bad[first] else "loss_self", first)
    keep = finite & np.isfinite(loss)
    codes, names = columns.codes("teacher")
    counts = np.bincount(codes[~keep], minlength=len(names))
    dropped = {names[c]: int(counts[c]) for c in in_order_of_appearance(codes[~keep], len(names))}
    if dropped:
        kept = {names[c] for c in np.flatnonzero(np.bincount(codes[keep], minlength=len(names)))}
        lost = sorted(set(dropped) - kept)
        if lost:
            raise ValueError(f"every pair of teacher(s) {', '.join(lost)} has a NaN or infinite reward or loss_self")
        warnings.warn(f"dropped {sum(dropped.values())} pairs with a NaN or infinite reward or loss_self "
                      f"({', '.join(f'{t}: {n}' for t, n in dropped.items())})", RuntimeWarning, stacklevel=3)
    return keep, dropped


def compared_pairs(columns: ScoreColumns, among: np.ndarray, shared_only: bool = True
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """(the pairs of `among` (a bool mask) to compare teachers on, what each teacher covers):
    `coverage` holds the number of instructions any teacher answered, how many every teacher
    answered (`shared`) and how many each lacks (`missing`, teachers in order of appearance). With
    `shared_only` the pairs are those of the shared instructions (records.instruction_key), so that
    no teacher is compared on other instructions than another; nothing shared is a ValueError."""
    teacher, names = columns.codes("teacher")
    instruction, keys = columns.codes("instruction")
    index = np.flatnonzero(among)
    answered = np.sort(teacher[index] * len(keys) + instruction[index])  # (teacher, instruction), each once:
    answered = answered[np.concatenate(([True], answered[1:] != answered[:-1]))]
    per_teacher = np.bincount(answered // len(keys), minlength=len(names))
    teachers_of = np.bincount(answered % len(keys), minlength=len(keys))
    order = in_order_of_appearance(teacher[index], len(names))
    union, shared = int(np.count_nonzero(teachers_of)), int(np.count_nonzero(teachers_of == len(order)))
    coverage = {"instructions": union, "shared": shared,
                "missing": {names[t]: union - int(per_teacher[t]) for t in order}, "shared_only": shared_only}
    if not shared_only or shared == union:
        return among, coverage
    if not shared:
        raise ValueError(f"no instruction is answered by every teacher ({lacks(coverage)}): give the teachers "
                         "the same instructions (the same ids), or rank with --no-shared-only to compare each "
                         "teacher on its own pairs")
    return among & (teachers_of == len(order))[instruction], coverage


def groups_of(columns: ScoreColumns, among: np.ndarray) -> dict[str, np.ndarray]:
    """The pairs of `among` (a bool mask) by teacher: teacher -> row indices in table order, teachers
    in order of appearance."""
    codes, names = columns.codes("teacher")
    index = np.flatnonzero(among)
    order = np.argsort(codes[index], kind="stable")
    ordered = codes[index][order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1]))) if len(ordered) else ordered
    parts = np.split(index[order], starts[1:])
    return {names[ordered[s]]: part for s, part in sorted(zip(starts, parts), key=lambda sp: sp[1][0])}


def in_order_of_appearance(codes: np.ndarray, size: int) -> list[int]:
    """The distinct values of `codes` (ints in [0, size)) in the order they first appear (np.unique
    is avoided: its hash path is slow on millions of keys)."""
    first = np.full(size, len(codes))
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.concatenate(([True], ordered[1:] != ordered[:-1])) if len(ordered) else np.zeros(0, dtype=bool)
    first[ordered[starts]] = order[starts]
    return [int(c) for c in np.argsort(first, kind="stable")[: int(starts.sum())]]


def values_of(columns: ScoreColumns, name: str, groups: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each group's `name` values as floats, in table order (NaN where missing)."""
    values, _ = columns.floats(name)
    return {t: values[index] for t, index in groups.items()}


def rewards_of(raw: dict[str, np.ndarray], transform: str) -> dict[str, np.ndarray]:
    """Each teacher's rewards after `transform` (over all teachers' rewards), warning when a mean
    raw reward is negative and the transform keeps it so."""
    everything = np.concatenate(list(raw.values()))
    if np.any(np.isnan(everything)):
        raise ValueError("some pairs have no reward: score every teacher with the same --reward-model")
    negative = [t for t, r in raw.items() if r.mean() < 0]
    if negative and transform == "raw":
        warnings.warn(
            f"mean reward is negative for {', '.join(negative)}: CAR = r / (1 + beta L) then rewards higher loss; "
            "consider --reward-transform shift or sigmoid", RuntimeWarning, stacklevel=3)
    return {t: metrics.transform_rewards(r, transform, reference=everything) for t, r in raw.items()}


def table_rows(columns: ScoreColumns, groups: dict[str, np.ndarray], rewards: dict[str, np.ndarray],
               losses: dict[str, np.ndarray], beta: float, student: str | None, kind: str, dropped: dict[str, int],
               coverage: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group (a teacher or a selection) with its averaged metrics and CAR."""
    table = []
    for teacher, index in groups.items():
        row: dict[str, Any] = {"student": student or "student", "teacher": teacher, "kind": kind, "n_pairs": len(index)}
        for name in AVERAGED:
            if columns.present(name, index[0]):
                values, bad = columns.floats(name)
                if bad is not None and bad[index].any():
                    columns.raise_bad(name, int(index[np.argmax(bad[index])]))
                values = values[index]
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
