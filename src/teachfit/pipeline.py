"""`teachfit run study.yaml`: a short loop over the stages' units that skips what is done.

Every stage's Stage record (teachfit.stages.STAGES) says how the study splits it into units.
A unit's completion marker records a fingerprint of its settings and input bytes and the digest
of each output it wrote; a unit whose fingerprint is unchanged and whose outputs are as it wrote
them is skipped without loading anything. A unit that runs still computes only what is missing
(answers already in the dataset files, scores and judgments in the run's content-hash cache,
checkpoints to resume from), so a new beta re-ranks only, a new teacher is generated and scored
alone, an output edited by hand is made again, and a killed run loses nothing.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from teachfit.experiment import Experiment, load_experiment
from teachfit.records import InputError
from teachfit.run import RunDir, file_digest, fingerprint, settings_of
from teachfit.stage import Unit
from teachfit.stages import BY_NAME, STAGES


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study: says what was saved and how to resume."""


def study_prices(experiment: Experiment) -> dict[str, Any]:
    """The price table of a study: the `prices` files its generate and evaluate sections name, read
    in that order (a later file's entry for a model wins); {} when none does."""
    from teachfit.ledger import read_prices

    configs = [experiment.stages.get("generate")] + list(experiment.stages.get("evaluate") or [])
    return read_prices(dict.fromkeys(c.prices for c in configs if getattr(c, "prices", None)))


def generation_estimate(experiment: Experiment, run: RunDir, prices: dict[str, Any]) -> list[dict[str, Any]]:
    """The dry run's ledger of the generate section: per teacher model, the answers still to make,
    cl100k tokens of their instructions in, and answers x max_new_tokens out (an upper bound)."""
    from teachfit.generate import pick_instructions, read_done, teacher_requests
    from teachfit.ledger import estimate_rows

    config = experiment.stages.get("generate")
    if config is None or not config.teacher or not config.instructions:
        return []
    items, jobs = pick_instructions(config), []
    for request in teacher_requests(config):
        done = read_done(run.responses(request.name), request)
        texts = [i.text for i in items for k in range(request.settings.n) if (i.id, k) not in done]
        jobs.append((request.spec, texts, request.settings.max_new_tokens))
    return [row for row in estimate_rows(jobs, prices) if row["requests"]]


def import_responses(experiment: Experiment, run: RunDir) -> int:
    """Copy the study's given datasets into RUN/responses/ (when absent or different)."""
    from teachfit.atomic import atomic_write

    copied = 0
    for source in map(Path, experiment.responses):
        if not source.is_file():
            raise InputError(experiment.path, None, f"responses: file not found: {source}")
        target = run.responses(source.stem)
        if not target.exists() or file_digest([target]) != file_digest([source]):
            with source.open("rb") as reader, atomic_write(target, "wb") as writer:
                shutil.copyfileobj(reader, writer)
            copied += 1
    return copied


def study_units(experiment: Experiment, run: RunDir) -> list[tuple[str, Unit]]:
    """(stage name, unit) of every unit the study implies, in data-flow order, computed from the
    plan (not from the files that exist): train and evaluate units are listed before anything ran."""
    return [(stage.name, unit) for stage in STAGES if stage.name in experiment.stages
            for unit in stage.units(experiment.stages[stage.name], experiment.plan, run)]


def unit_key(unit: Unit) -> str:
    """The fingerprint of a unit's settings and the bytes of its inputs, as they are now."""
    inputs = unit.inputs() if callable(unit.inputs) else unit.inputs
    return fingerprint(settings_of(unit.config), file_digest(inputs))


def _wanted(experiment: Experiment, only: Sequence[str] | None) -> list[str]:
    """The stages to run: every stage of the file, or those --only names (each must be in the file)."""
    for name in only or ():
        if name not in BY_NAME:
            raise InputError("--only", None, f"unknown stage '{name}'; stages: {', '.join(BY_NAME)}")
        if name not in experiment.stages:
            raise InputError("--only", None, f"{experiment.path} has no '{name}' section "
                                             f"(its sections: {', '.join(experiment.stages) or 'none'})")
    return [s.name for s in STAGES if s.name in experiment.stages and (not only or s.name in only)]


def plan_study(experiment: Experiment, run: RunDir, wanted: Sequence[str]) -> list[dict[str, Any]]:
    """The dry run: each unit, done or to run, and why. A unit is also 'to run' when a stage it
    reads will run before it (its inputs will change)."""
    rows, running = [], set()
    for stage, unit in study_units(experiment, run):
        if stage not in wanted:
            continue
        why = run.why_not_done(unit.name, unit_key(unit), unit.outputs)
        upstream = [s for s in BY_NAME[stage].needs if s in running]
        if why is None and upstream:
            why = f"after {', '.join(upstream)}"
        if why is not None:
            running.add(stage)
        work = unit.work() if callable(unit.work) else unit.work
        rows.append({"stage": unit.name, "status": "done" if why is None else "to run",
                     "why": why or "", "work": "-" if why is None else work})
    return rows


def run_experiment(path: str | Path, run_dir: str | Path | None = None, only: Sequence[str] | None = None,
                   executor: str | None = None, dry_run: bool = False, show: Callable[[str], Any] = print,
                   progress: bool = True) -> dict[str, Any]:
    """Run (or, with dry_run, plan) every unit of a study file; returns per-unit stats (or the
    plan: one row per unit with its status). One `teachfit run` at a time works in a run directory.
    `progress=False` hides every stage's progress bars (whatever the file says)."""
    experiment = load_experiment(path, run_dir)
    if executor:
        experiment.executor = replace(experiment.executor, type=executor)
    wanted = _wanted(experiment, only)
    run = RunDir(experiment.run_dir)
    prices = study_prices(experiment)  # a bad price table stops the study before anything runs
    if dry_run:
        estimate = generation_estimate(experiment, run, prices) if "generate" in wanted else []
        return {"run_dir": str(run.root), "plan": plan_study(experiment, run, wanted), "estimate": estimate}
    with run.lock():
        log = logged(run, show)
        stages = _run_units(experiment, run, wanted, path, log, progress)
        if {"generate", "evaluate"} & set(experiment.stages):
            from teachfit.ledger import ledger_line, write_ledger

            line = ledger_line(write_ledger(run.root, prices))  # every stage's tokens, at the study's prices
            if line:
                log(f"ledger ({run.root / 'ledger.csv'}): {line}")
        return {"run_dir": str(run.root), "stages": stages}


def logged(run: RunDir, show: Callable[[str], Any]) -> Callable[[str], Any]:
    """`show`, also appending each line with its time to RUN/run.log (what every run did, kept)."""
    import time

    def both(line: str) -> Any:
        with (run.root / "run.log").open("a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line.strip()}\n")
        return show(line)

    return both


def _run_units(experiment: Experiment, run: RunDir, wanted: Sequence[str], path: Any,
               show: Callable[[str], Any], progress: bool = True) -> dict[str, Any]:
    from teachfit.executors import make_executor

    run.write_manifest({"experiment": str(experiment.path), "sections": experiment.raw,
                        "executor": asdict(experiment.executor)})
    import_responses(experiment, run)
    runner = make_executor(experiment.executor)
    results: dict[str, Any] = {}
    current = None
    try:
        for stage_name, unit in study_units(experiment, run):
            if stage_name not in wanted:
                continue
            stage, current = BY_NAME[stage_name], unit.name
            key = unit_key(unit)
            why = run.why_not_done(unit.name, key, unit.outputs)
            if why is None:
                show(f"[{unit.name}] done (unchanged)")
                results[unit.name] = run.done_stats(unit.name)
                continue
            show(f"[{unit.name}] running ({why})")
            config = unit.config if progress or not hasattr(unit.config, "progress") else replace(unit.config, progress=False)
            stats, seconds = timed(stage.run, config, run, runner)
            line = stage.line(stats)
            summary = stage.summary(stats) | {"seconds": seconds}
            run.mark_done(unit.name, key, summary, unit.outputs)
            results[unit.name] = summary
            show(f"[{unit.name}] finished in {seconds}s" + (f": {line}" if line else ""))
    except KeyboardInterrupt:
        finished = [name for name in results if name != current]
        raise StudyInterrupted(f"interrupted during [{current}]: {len(finished)} finished units are saved in "
                               f"{run.root}; run `teachfit run {path}` again to resume") from None
    if "rank" in wanted:
        _print_rankings(run, show)
    return results


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(function(*args), seconds it took)."""
    import time

    started = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - started, 1)


def _print_rankings(run: RunDir, show: Callable[[str], Any]) -> None:
    """The ranking tables the rank stage wrote (from ranking.json: nothing is recomputed)."""
    import json

    from teachfit.ranking_text import ranking_text

    try:
        data = json.loads(run.ranking_json.read_text(encoding="utf-8"))
        tables = [ranking_text(ranking) for ranking in data.values()]
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as error:
        raise InputError(run.ranking_json, None, f"cannot be read as rankings ({type(error).__name__}): "
                                                 "run the rank stage again") from None
    for table in tables:
        show("\n" + table)


def plan_text(result: dict[str, Any]) -> str:
    """The dry-run plan as a table."""
    width = max([len(r["stage"]) for r in result["plan"]] + [5])
    lines = [f"run directory: {result['run_dir']}", f"{'unit':<{width}}  {'status':<7}  work"]
    lines += [f"{r['stage']:<{width}}  {r['status']:<7}  {r['work']}" + (f"  ({r['why']})" if r["why"] else "")
              for r in result["plan"]]
    if result.get("estimate"):
        from teachfit.ledger import ledger_line

        lines += [ledger_line(result["estimate"], "generate", estimate=True),
                  "  (in: cl100k tokens of the instruction texts, without the chat template, which adds a few "
                  "to dozens per request; out: an upper bound, every answer max_new_tokens long; cost: of these)"]
    return "\n".join(lines)
