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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from teachfit import metrics
from teachfit.config import RankConfig
from teachfit.run import RunDir
from teachfit.ranking_text import SETTLED, markdown_table  # SETTLED: on top less often is unsettled
from teachfit.pairs_needed import pairs_needed_of
from teachfit.rank_arrays import (AVERAGED, compared_pairs, groups_of, rewards_of, table_rows,  # noqa: F401
                                  usable_pairs, values_of)
from teachfit.score_columns import ScoreColumns
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


def _bootstrap(rewards: dict[str, np.ndarray], losses: dict[str, np.ndarray], beta: float, n: int, seed: int
               ) -> tuple[dict[str, tuple[float, float]], dict[str, float], tuple[list[str], np.ndarray]]:
    """(each teacher's CAR 95% interval, its share of resamples on top, (the teachers, the (n, teachers) draws))."""
    teachers = list(rewards)
    draws = metrics.car_bootstrap([rewards[t] for t in teachers], [losses[t] for t in teachers], beta, n, seed)
    intervals = {t: metrics.percentile_interval(draws[:, j]) for j, t in enumerate(teachers)}
    winners = np.argmax(draws, axis=1)
    shares = {t: float(np.mean(winners == j)) for j, t in enumerate(teachers)}
    return intervals, shares, (teachers, draws)


def rank_teachers(
    rows: Sequence[dict[str, Any]] | Any, beta: float = 3.0, reward_transform: str = "raw",
    n_bootstrap: int = 1000, seed: int = 0, student: str | None = None, shared_only: bool = True,
    selections: Sequence[str] = (), target: float | None = None,
) -> Ranking:
    """Aggregate per-pair score rows (dicts, or a pyarrow.Table of them: files.read_table_columnar) into a
    ranked per-teacher table and a recommendation (`student` labels the rows, so rankings of
    several students can be correlated together). Teachers that cover different instructions
    (answers missing, skipped or dropped as non-finite) are compared on the instructions all of
    them share, or with `shared_only=False` each on its own pairs; settings["coverage"] and each
    row's `n_instructions_missing` say what each lacks.

    Rows whose `teacher` is one of `selections` are selections: ranked on their own pairs in
    Ranking.selections (`kind` = selection), with their CAR interval, but outside the
    recommendation, the coverage and the share of resamples on top (`top_share` NaN). When the
    recommended teacher is on top in fewer than SETTLED of the resamples, or a `target` is given,
    settings["pairs_needed"] holds the pairs_needed estimate (for `target`, else SETTLED)."""
    columns = ScoreColumns(rows)
    usable, dropped = usable_pairs(columns, beta)
    codes, names = columns.codes("teacher")
    chosen = np.isin(codes, [k for k, name in enumerate(names) if name in {str(s) for s in selections}])
    if not (usable & ~chosen).any():
        raise ValueError("no teacher to rank: every scored pair belongs to a selection")
    compared, coverage = compared_pairs(columns, usable & ~chosen, shared_only)
    groups = groups_of(columns, compared)
    raw = values_of(columns, "reward", groups)
    rewards = rewards_of(raw, reward_transform)
    losses = values_of(columns, "loss_self", groups)
    table = table_rows(columns, groups, rewards, losses, beta, student, "teacher", dropped, coverage)
    intervals, shares, draws = _bootstrap(rewards, losses, beta, n_bootstrap, seed) if n_bootstrap else ({}, {}, None)
    for row in table:
        row["car_ci_low"], row["car_ci_high"] = intervals.get(row["teacher"], (math.nan, math.nan))
        row["top_share"] = shares.get(row["teacher"], math.nan)
    add_ranks(table)
    table.sort(key=lambda r: r["rank_car"])
    chosen_table = _selections_table(columns, groups_of(columns, usable & chosen), np.concatenate(list(raw.values())),
                                     beta, reward_transform, n_bootstrap, seed, student, dropped)
    best = table[0]["teacher"]
    settings = {"beta": beta, "reward_transform": reward_transform, "n_bootstrap": n_bootstrap, "seed": seed,
                "student": student, "dropped_nonfinite": sum(dropped.values()), "coverage": coverage,
                "settled": SETTLED, "selections": [r["teacher"] for r in chosen_table]}
    top_share = table[0]["top_share"]
    if len(table) > 1 and (target or (math.isfinite(top_share) and top_share < SETTLED)):
        settings["pairs_needed"] = pairs_needed_of(raw, losses, beta, reward_transform, target or SETTLED,
                                                   n_bootstrap=n_bootstrap or 1000, seed=seed, draws=draws)
    return Ranking(rows=table, recommended=best, top_share=top_share, settings=settings, selections=chosen_table)


def _selections_table(columns: ScoreColumns, picked: dict[str, np.ndarray], everything: np.ndarray, beta: float,
                      transform: str, n_bootstrap: int, seed: int, student: str | None, dropped: dict[str, int]
                      ) -> list[dict[str, Any]]:
    """The selections' rows, best CAR first: each on its own pairs, its rewards transformed over
    the teachers' (`everything`), with its CAR interval and no share on top."""
    if not picked:
        return []
    picked_rewards = {t: metrics.transform_rewards(r, transform, reference=everything)
                      for t, r in values_of(columns, "reward", picked).items()}
    picked_losses = values_of(columns, "loss_self", picked)
    table = table_rows(columns, picked, picked_rewards, picked_losses, beta, student, "selection", dropped,
                       {"missing": {}})
    intervals = _bootstrap(picked_rewards, picked_losses, beta, n_bootstrap, seed)[0] if n_bootstrap else {}
    for row in table:
        row["car_ci_low"], row["car_ci_high"] = intervals.get(row["teacher"], (math.nan, math.nan))
        row["top_share"] = math.nan
    table.sort(key=lambda r: -r["car"])
    return table


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


def with_selections(run: Any, scores: Any) -> tuple[Any, list[str]]:
    """The scores (rows or a pyarrow.Table) with the score rows of every selection in the run
    appended, relabelled with the selection's name, so that selections are ranked beside whole
    teachers; and the selections' names, one per appended row. A torn or edited selection line is
    an InputError naming its file and line."""
    from teachfit.files import read_records
    from teachfit.records import InputError

    wanted: list[tuple[str, str, str]] = []  # (selection, teacher, id)
    for path in run.selection_files():
        for line, record in read_records(path):
            if "teacher" not in record or "id" not in record:
                raise InputError(path, line, "not a selection record (it needs 'teacher' and 'id'): "
                                             "re-run `teachfit select` to write it again")
            wanted.append((path.stem, str(record["teacher"]), str(record["id"])))
    if not wanted:
        return scores, []
    found = ScoreColumns(scores).rows_of_pairs({(t, i) for _, t, i in wanted})
    picked = [(name, found[(t, i)]) for name, t, i in wanted if (t, i) in found]
    names = [name for name, _ in picked]
    import pyarrow as pa

    at = scores.column_names.index("teacher") if hasattr(scores, "column_names") else None
    if at is None or scores.schema.field(at).type not in (pa.string(), pa.large_string()):
        rows = scores.to_pylist() if at is not None else list(scores)  # (teachers that are not text: rows)
        return rows + [dict(rows[k], teacher=name) for name, k in picked], names
    extra = scores.take([k for _, k in picked])
    extra = extra.set_column(at, "teacher", pa.array(names, scores.schema.field(at).type))
    return pa.concat_tables([scores, extra]), names


def run_rank(config: RankConfig, run: Any, executor: Any = None) -> dict[str, Ranking]:
    """Scores -> one ranking per student, written to RUN/ranking.csv and ranking.json (a
    `student` column tells them apart), and to --csv / --json-out. Returns the rankings, by student."""
    from teachfit.atomic import write_json_atomic
    from teachfit.files import read_table_columnar, write_table

    from teachfit.records import InputError

    files = score_files_of(config.scores, run)
    if not files:
        raise ValueError("no score files: run `teachfit score` first")
    rankings = {}
    for path in files:
        scores, meta = read_table_columnar(path)  # Parquet: a pyarrow.Table, no dict per row
        student = student_of(meta) or path.stem
        chosen: list[str] = []
        if run is not None and ScoreColumns(scores).everyone_has("teacher"):  # else rank_teachers says what is wrong
            teachers = ScoreColumns(scores)
            scores, chosen = with_selections(run, scores)
            clash = sorted(set(chosen) & set(teachers.codes("teacher")[1])) if chosen else []
            if clash:
                raise InputError(run.selection(clash[0]), None, f"selection '{clash[0]}' has the name of a teacher: "
                                                                "rename the selection (teachfit select --name)")
        try:  # what is wrong with the scores is an error about their file
            ranking = rank_teachers(scores, beta=config.beta, reward_transform=config.reward_transform,
                                    n_bootstrap=config.bootstrap, seed=config.seed, student=student,
                                    shared_only=config.shared_only, target=config.target, selections=sorted(set(chosen)))
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
