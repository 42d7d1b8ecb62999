"""Stage `select`: stored per-pair scores -> one response per instruction, the data a student trains on.

Every method works from the score rows alone (no model pass) and picks, per instruction, the
candidate with the largest selection score (the smallest with `worst=True`):
  car           every pair of the top-CAR teacher (rank.rank_teachers; the paper's choice)
  car-instance  T(r) / (1 + beta * loss_self), T = rank's reward transform over all rewards
  grape         -loss_self: the highest mean token log-probability under the student (GRAPE)
  persyn        (1 - alpha) * q + alpha * l, q = reward, l = -loss_self, each min-max normalised over
                the instruction's candidates (all equal -> 0.5) (PerSyn)
  reward        the reward (best-of-N; worst-of-N with worst=True)
  random        a seeded uniform draw per candidate (the baseline)
Candidates of one instruction share its id; N samples of one teacher (`<instruction id>#s<k>`, as
generate writes them) are grouped by their `instruction_id` field, or by the id without `#s<k>`.
Ties go to the first teacher in name order (then the first pair id); a candidate without the
scores a method needs is left out, and an instruction left with none is reported, not dropped
silently. Pure: numpy only, no torch. The scores are worked on as columns (select_arrays: 2M
pairs take about a second); only the chosen rows become dicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from teachfit import metrics
from teachfit import select_arrays as arrays
from teachfit.config import SelectConfig
from teachfit.run import RunDir
from teachfit.score_columns import ScoreColumns
from teachfit.stage import Plan, Stage, Unit
from teachfit.training_set import student_template, write_selection

METHODS = ("car", "car-instance", "grape", "persyn", "reward", "random")
NEEDS = {"car": ("reward", "loss_self"), "car-instance": ("reward", "loss_self"), "grape": ("loss_self",),
         "persyn": ("reward", "loss_self"), "reward": ("reward",), "random": ()}
SUMMARY_COLUMNS = arrays.SUMMARY_COLUMNS


@dataclass
class Selection:
    """The chosen rows (score rows plus `instruction_id`, `selection_score`, `candidates`) and a summary."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def select_pairs(rows: Sequence[dict[str, Any]] | Any, method: str, beta: float = 3.0, alpha: float = 0.4,
                 seed: int = 0, reward_transform: str = "raw", worst: bool = False) -> Selection:
    """One row per instruction chosen by `method` (see the module doc), with a summary: each
    teacher's share of the selection, mean reward / loss_self / length of the selection beside each
    single teacher's, and the instructions with no usable candidate (`missing`) or some
    (`partial`). `rows`: score rows (dicts), or a pyarrow.Table of them (files.read_table_columnar):
    the work is on columns (select_arrays), and only the chosen rows become dicts."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if worst and method == "random":
        raise ValueError("worst=True has no meaning for random selection")
    columns = ScoreColumns(rows)
    if not len(columns):
        raise ValueError("no score rows to select from")
    needs = NEEDS[method]
    absent = [name for name in needs if not columns.has(name)]
    if absent:
        hint = " (score with --reward-model or --reward-column)" if "reward" in absent else ""
        raise ValueError(f"method {method!r} needs the column(s) {absent}, which the scores lack{hint}")
    # a candidate is usable when every value its method needs is a finite number; one whose value is
    # there but NaN or infinite is dropped and counted (one without the value is simply unscored)
    usable, nonfinite = np.ones(len(columns), dtype=bool), np.zeros(len(columns), dtype=bool)
    for name in needs:
        finite = np.isfinite(columns.floats(name)[0])
        usable &= finite
        nonfinite |= ~finite & arrays.given(columns, name)
    nonfinite &= ~usable
    if not usable.any():
        raise ValueError(f"no score row has every column method {method!r} needs: {list(needs)}")
    instruction, keys = columns.codes("instruction")
    teacher, names = columns.codes("teacher")

    candidates, car = usable, math.nan
    teacher_car: dict[str, float] = {}
    if method == "car":
        from teachfit.rank import rank_teachers

        # each teacher's CAR on its own pairs: the whole teacher is taken, whatever it answered
        ranking = rank_teachers(arrays.rows_or_table_of(columns, usable), beta=beta, reward_transform=reward_transform,
                                n_bootstrap=0, shared_only=False)
        cars = {row["teacher"]: row["car"] for row in ranking.rows}
        best = (min if worst else max)(cars.values())
        chosen = sorted(t for t, c in cars.items() if c == best)[0]
        teacher_car, car = {chosen: cars[chosen]}, cars[chosen]
        candidates = usable & (teacher == names.index(chosen))
    everything = columns.floats("reward")[0][usable] if "reward" in needs else np.zeros(0)

    def transform(values: np.ndarray) -> np.ndarray:
        return metrics.transform_rewards(values, reward_transform, reference=everything)

    pairs, runs, starts = arrays.candidate_order(columns, candidates)
    scores = arrays.selection_scores(method, columns, pairs, starts, beta, alpha, transform,
                                     np.random.default_rng(seed), car)
    finite = np.isfinite(scores)  # finite values can still give a non-finite score (1 + beta * loss = 0)
    dropped = np.zeros(len(columns), dtype=bool)
    dropped[pairs[~finite]] = True
    pairs, runs, scores = pairs[finite], runs[finite], scores[finite]
    starts = arrays.run_starts(runs)
    picks = arrays.first_best_in_runs(-scores if worst else scores, starts)
    chosen_pairs, chosen_runs = pairs[picks], runs[picks]

    before = np.bincount(instruction[candidates], minlength=len(keys))  # candidates per instruction
    after = np.bincount(runs, minlength=len(keys))  # ... with a finite score
    total = np.bincount(instruction, minlength=len(keys))
    partial = (before > 0) & (((before < total) & (method != "car")) | ((after < before) & (after > 0)))
    selected = [row | {"instruction_id": keys[k], "selection_score": float(s), "candidates": int(after[k])}
                for row, k, s in zip(arrays.rows_at(columns, chosen_pairs), chosen_runs, scores[picks])]

    by_teacher = arrays.teacher_pairs(columns)
    chosen_teachers = np.bincount(teacher[chosen_pairs], minlength=len(names))
    code_of = {name: code for code, name in enumerate(names)}
    share = {t: int(chosen_teachers[code_of[t]]) / len(selected) if selected else 0.0 for t in by_teacher}
    nonfinite_of = arrays.counts_by_teacher(columns, nonfinite | dropped)
    summary = {
        "method": method, "settings": {"beta": beta, "alpha": alpha, "seed": seed, "reward_transform": reward_transform,
                                       "worst": worst},
        "n_instructions": len(keys), "n_selected": len(selected), "share": share,
        "selection": arrays.means(columns, chosen_pairs),
        "teachers": {t: arrays.means(columns, index) | {"n_dropped_nonfinite": nonfinite_of.get(t, 0)}
                     for t, index in by_teacher.items()},
        "missing": [keys[k] for k in np.flatnonzero(after == 0)], "partial": [keys[k] for k in np.flatnonzero(partial)],
        "dropped_nonfinite": sum(nonfinite_of.values()),
    }
    if method == "car":
        summary["car_teacher"], summary["car"] = next(iter(teacher_car.items()))
    return Selection(rows=selected, summary=summary)


# ---- the stage ---------------------------------------------------------------------------------
def selection_name(config: SelectConfig) -> str:
    """`<method>` or `<teacher>-<best|worst>-<method>`, unless the config names it."""
    from teachfit.run import safe_name

    if config.name:
        return safe_name(config.name, "selection name")
    stem = f"{config.teacher}-" if config.teacher else ""
    return safe_name(f"{stem}{'worst' if config.worst else 'best'}-{config.by}" if config.teacher or config.worst
                     else config.by, "selection name")


def run_select(config: SelectConfig, run: Any, executor: Any = None) -> dict[str, Any]:
    """Scores -> one response per instruction (RUN/selections/<name>.jsonl, and config.out), each
    with a dataset card beside it (dataset_card), the chat template scored with beside a
    conversational format when the student has none, and, with config.push_to_hub, uploaded."""
    from teachfit import dataset_card
    from teachfit.files import read_pairs, read_table_columnar
    from teachfit.rank import score_files_of
    from teachfit.template import DEFAULT_TEMPLATE_NAME, DEFAULT_TRAINING_CHAT_TEMPLATE
    from teachfit.training_set import selected_texts

    files = score_files_of(config.inputs, run)
    if not files:
        raise ValueError("no score files to select from: run `teachfit score` first")
    # every student's file has the same pairs; the first student selects. Parquet: a pyarrow.Table
    scores, meta = read_table_columnar(files[0])
    if config.teacher:
        scores = _of_teacher(scores, config.teacher)
        if not len(scores):
            raise ValueError(f"no scored pairs of teacher '{config.teacher}' in {files[0]}")
    selection = select_pairs(scores, config.by, beta=config.beta, alpha=config.alpha, seed=config.seed,
                             reward_transform=config.reward_transform, worst=config.worst)
    del scores  # not needed while the texts are read
    # the texts of the selected pairs only (and which instructions went unscored), read in one pass
    pairs = selected_texts(selection, read_pairs([Path(p) for p in meta.get("inputs", [])]))
    # the run's own copy is in the messages format, which train and rank read; --out in the one asked for
    name = selection_name(config)
    outs = [(run.selection(name), "messages", True)] if run else []
    outs += [(Path(config.out), config.format, False)] if config.out else []
    if not outs:
        raise ValueError("give --out (or a run directory)")
    tokenizer, template, note = student_template(meta, any(fmt == "text" for _, fmt, _ in outs))
    chat_template = DEFAULT_TRAINING_CHAT_TEMPLATE if template == DEFAULT_TEMPLATE_NAME else None
    summary: dict[str, Any] = {}
    context = dataset_card.CardContext(name=name, config=config, metadata=meta, scores=str(files[0]),
                                       template=template, template_note=note, run_root=run.root if run else None)
    for out, fmt, own in outs:
        summary = write_selection(selection, pairs, out, fmt, tokenizer=tokenizer, chat_template=chat_template,
                                  stem_names=own)
        summary["files"]["card"] = str(dataset_card.write_card(context, summary, out, stem_names=own))
    if config.push_to_hub:
        summary["pushed"] = dataset_card.push_to_hub(config.push_to_hub, context, summary)
    return summary | {"written": [str(out) for out, _, _ in outs]}


def _of_teacher(scores: Any, teacher: str) -> Any:
    """The score rows (dicts or a pyarrow.Table) whose str(teacher) is `teacher`, as they were given."""
    columns = ScoreColumns(scores)
    codes, names = columns.codes("teacher")
    return arrays.rows_or_table_of(columns, codes == (names.index(teacher) if teacher in names else -1))


def _plan(items: list[SelectConfig], plan: Plan) -> None:
    """Each selection has a name of its own (it is a dataset beside the teachers': train and rank
    use both) and chooses among a dataset the study has."""
    if "score" not in plan.sections:
        plan.fail(("select",), "'select' needs a 'score' section (its scores choose the pairs)")
    listed = isinstance(plan.raw.get("select"), list)
    for index, item in enumerate(items):
        where = ("select", index) if listed else ("select",)
        try:
            name = selection_name(item)
        except ValueError as error:
            plan.fail(where + ("name",), str(error))
        if item.teacher and item.teacher not in plan.of("dataset"):
            plan.fail(where + ("teacher",), f"'{item.teacher}' is not a dataset of this study "
                                            f"(datasets: {', '.join(plan.of('dataset')) or 'none'})")
        plan.add("dataset", name, where, f"select item {index + 1} (by {item.by})")
        plan.add("selection", name, where, f"select item {index + 1} (by {item.by})")


def _units(items: list[SelectConfig], plan: Plan, run: Any) -> list[Unit]:
    from teachfit.teachers import student_name

    scores = [run.scores(student_name(s)) for s in plan.sections["score"].student[:1]]
    responses = [run.responses(name) for name in plan.of("dataset") if name not in plan.of("selection")]
    return [Unit(f"select-{selection_name(item)}", item, inputs=scores + responses,
                 outputs=[run.selection(selection_name(item))]) for item in items]


def _line(summary: dict[str, Any]) -> str:
    shares = ", ".join(f"{t} {s:.0%}" for t, s in (summary.get("share") or {}).items())
    chosen = summary.get("selection") or {}
    means = ", ".join(f"mean {k} {chosen[k]:.3f}" for k in ("reward", "loss_self")
                      if isinstance(chosen.get(k), (int, float)) and math.isfinite(chosen[k]))
    missing = len(summary.get("missing") or [])
    dropped = summary.get("dropped_nonfinite") or 0
    return (f"selected {chosen.get('n_pairs', 0)} responses by {summary.get('method')} ({shares})" + (f"; {means}" if means else "")
            + (f"; {missing} instructions without a usable candidate" if missing else "")
            + (f"; {dropped} candidates dropped (NaN or infinite score)" if dropped else "")
            + f" -> {', '.join(summary['written'])}")


STAGE = Stage(
    name="select", config=SelectConfig, run=run_select, plan=_plan, units=_units, line=_line, listed=True,
    run_dir_of=lambda config: RunDir.among(config.inputs),
    needs=("score",),
    help="The training set: one response per instruction, from one teacher (car) or mixed per instruction "
         "(car-instance, grape, persyn, reward, random); best-/worst-of-N with --teacher.",
    summary=lambda s: {k: v for k, v in s.items() if k in ("selection", "share", "written", "format", "dropped_nonfinite",
                                                               "files", "pushed")},
)
