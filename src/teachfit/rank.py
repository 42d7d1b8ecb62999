"""Stage `rank`: per-pair scores -> one row per teacher, ranked by CAR and every baseline metric.

CAR(D) = mean r / (1 + beta * L), L = mean loss(y|x) under the student (paper eq. 3). A paired
bootstrap over pairs (resampling each teacher's pairs) gives CAR's 95% interval and how often the
recommended teacher stays on top. Selections (datasets `teachfit select` chose from the teachers'
answers) get their CAR and interval in a table of their own: they are not teachers, so they are
never recommended and take no part in "on top". A lead on top in fewer than SETTLED of the
resamples is not settled: the ranking then says how many pairs per teacher would settle it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from teachfit import metrics
from teachfit.config import RankConfig
from teachfit.run import RunDir
from teachfit.ranking_text import SETTLED, lacks, markdown_table  # SETTLED: on top less often is unsettled
from teachfit.pairs_needed import pairs_needed
from teachfit.score_rows import column, group_by_teacher, number
from teachfit.stage import Stage

# Direction of each metric when ranking teachers: +1 higher is better, -1 lower is better.
# Reward, CAR and length follow the paper; perplexity ranks lower (more compatible) first; IFD
# ranks higher (harder, "more to learn", as in Cherry-LLM's selection) first. RSR (Rank-Surprisal
# Ratio, arXiv 2601.14249) ranks lower first.
METRIC_DIRECTIONS: dict[str, int] = {
    "car": +1, "reward": +1, "length": +1,
    "ppl_self": -1, "ifd_self": +1, "ifd_loss_ratio_self": +1, "loss_self": -1,
    "ppl_ref": -1, "ifd_ref": +1, "ifd_loss_ratio_ref": +1, "loss_ref": -1,
    "rsr_self": -1, "rsr_ref": -1,
}
AVERAGED = ("reward", "loss_self", "loss_self_uncond", "ppl_self", "ifd_self", "ifd_loss_ratio_self",
            "loss_ref", "loss_ref_uncond", "ppl_ref", "ifd_ref", "ifd_loss_ratio_ref", "length", "n_response_tokens",
            "mean_rank_self", "mean_rank_ref")


@dataclass
class Ranking:
    """The per-teacher table, the recommendation (a teacher, never a selection), the selections'
    own table (`kind` = selection) and the settings that produced them."""

    rows: list[dict[str, Any]]
    recommended: str
    top_share: float
    settings: dict[str, Any] = field(default_factory=dict)
    selections: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {"recommended": self.recommended, "top_share": self.top_share, "settings": self.settings,
                "directions": METRIC_DIRECTIONS, "teachers": self.rows, "selections": self.selections}


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
    from teachfit.records import instruction_key

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
    draws = metrics.car_bootstrap([rewards[t] for t in teachers], [losses[t] for t in teachers], beta, n, seed)
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


def student_of(metadata: dict[str, Any]) -> str | None:
    """The student's spec recorded in a scores file's metadata."""
    for scorer in metadata.get("scorers") or []:
        if scorer.get("role") == "self":
            return scorer["model"]["spec"]
    return None


def add_ranks(table: list[dict[str, Any]]) -> None:
    """Add `rank_<metric>` (1 = best, ties averaged) for every metric with a known direction."""
    for name, direction in METRIC_DIRECTIONS.items():
        if all(name in row and not math.isnan(row[name]) for row in table):
            values = [-direction * row[name] for row in table]
            for row, rank in zip(table, metrics.average_ranks(values)):
                row[f"rank_{name}"] = float(rank)


# The terminal table's columns: (header, format of one row) — the README shows the same shape.
# ---- the stage ---------------------------------------------------------------------------------
def score_files_of(inputs: Sequence[str], run: Any) -> list[Path]:
    """Score files named directly or inside run directories, else the run's own."""

    files = [f for p in map(Path, inputs) for f in (RunDir(p).score_files() if p.is_dir() else [p])]
    return files or (run.score_files() if run else [])


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


def run_rank(config: RankConfig, run: Any, executor: Any = None) -> dict[str, Ranking]:
    """Scores -> one ranking per student, written to RUN/ranking.csv and ranking.json (a
    `student` column tells them apart), and to --csv / --json-out. Returns the rankings, by student."""
    from teachfit.atomic import write_json_atomic
    from teachfit.files import read_table, write_table

    from teachfit.records import InputError

    files = score_files_of(config.scores, run)
    if not files:
        raise ValueError("no score files: run `teachfit score` first")
    rankings = {}
    for path in files:
        rows, meta = read_table(path)
        student = student_of(meta) or path.stem
        chosen: list[dict[str, Any]] = []
        if run is not None and all("teacher" in r for r in rows):  # else rank_teachers says what is wrong
            chosen = selection_rows(run, rows)
            clash = sorted({str(r["teacher"]) for r in chosen} & {str(r["teacher"]) for r in rows})
            if clash:
                raise InputError(run.selection(clash[0]), None, f"selection '{clash[0]}' has the name of a teacher: "
                                                                "rename the selection (teachfit select --name)")
        try:  # what is wrong with the scores is an error about their file
            ranking = rank_teachers(rows + chosen, beta=config.beta, reward_transform=config.reward_transform,
                                    n_bootstrap=config.bootstrap, seed=config.seed, student=student,
                                    shared_only=config.shared_only, target=config.target,
                                    selections=sorted({str(r["teacher"]) for r in chosen}))
            ranking.settings["scores"] = str(path)
        except InputError:
            raise
        except ValueError as error:
            raise InputError(path, None, str(error)) from None
        rankings[student] = ranking
    table = [r for k in rankings.values() for r in k.rows + k.selections]
    columns = list(dict.fromkeys(c for r in table for c in r))  # teachers and selections: one header
    table = [{c: r.get(c, "") for c in columns} for r in table]
    data = {s: k.to_dict() for s, k in rankings.items()}
    settings = {"stage": "rank", "beta": config.beta, "reward_transform": config.reward_transform,
                "shared_only": config.shared_only, "n_bootstrap": config.bootstrap, "seed": config.seed,
                "target": config.target, "command": rank_command(config), "date": _now(), "settled": SETTLED,
                "students": {s: {"recommended": k.recommended, "top_share": k.top_share, "scores": k.settings["scores"],
                                 "coverage": k.settings["coverage"], "pairs_needed": k.settings.get("pairs_needed"),
                                 "selections": k.settings["selections"]} for s, k in rankings.items()}}
    if run is not None:
        write_table(run.ranking_csv, table, settings)
        write_json_atomic(run.ranking_json, data)
    if config.csv:
        write_table(Path(config.csv), table, settings)
    if config.json_out:
        write_json_atomic(Path(config.json_out), data if len(data) > 1 else next(iter(data.values())))
    return rankings


def _now() -> str:
    """The local date and time, to the second, with its UTC offset."""
    from datetime import datetime

    return datetime.now().astimezone().isoformat(timespec="seconds")


def rank_command(config: RankConfig) -> str:
    """The `teachfit rank` command line that gives this configuration (options at their default left out)."""
    from teachfit.config import command_line

    return command_line("rank", config)


def _units(config: RankConfig, plan: Any, run: Any) -> list[Any]:
    from teachfit.stage import Unit
    from teachfit.teachers import student_name

    def inputs() -> list[Path]:
        return [run.scores(student_name(s)) for s in plan.sections["score"].student] + run.selection_files()

    return [Unit("rank", config, inputs=inputs, outputs=[run.ranking_csv, run.ranking_json])]


def _plan(config: RankConfig, plan: Any) -> None:
    if "score" not in plan.sections:
        plan.fail(("rank",), "'rank' needs a 'score' section (it ranks its scores)")


STAGE = Stage(
    name="rank", config=RankConfig, run=run_rank, plan=_plan, units=_units, needs=("score", "select"),
    run_dir_of=lambda config: RunDir.among(config.scores),
    text=lambda rankings: "\n\n".join(markdown_table(k) for k in rankings.values()),
    help="Rank teachers for each student by CAR and every baseline metric, and recommend one "
         "(a run directory gets ranking.csv and ranking.json).",
    summary=lambda rankings: {"recommended": {s: k.recommended for s, k in rankings.items()}},
    line=lambda rankings: "; ".join(f"{s}: recommended {k.recommended}" for s, k in rankings.items()),
)
