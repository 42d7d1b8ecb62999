"""`teachfit run experiment.yaml`: a short loop over the stages that skips what is done.

A stage's completion marker records a fingerprint of its settings and of the files it reads; a
stage whose fingerprint is unchanged is skipped without loading anything. A stage that runs
still computes only what is missing (answers already in the dataset files, scores and
judgments in the run's content-hash cache, checkpoints to resume from), so a new beta re-ranks
only, a new teacher is generated and scored alone, and a killed run loses nothing.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from teachfit.experiment import STAGE_ORDER, Experiment, bench_name, load_experiment
from teachfit.run import RunDir, file_digest, fingerprint
from teachfit import stages as stage_functions


def _settings(config: Any) -> dict[str, Any]:
    """A config's fields that change results (the progress bar does not)."""
    return {k: v for k, v in asdict(config).items() if k != "progress"}


def import_responses(experiment: Experiment, run: RunDir) -> int:
    """Copy the experiment's given datasets into RUN/responses/ (when absent or different)."""
    copied = 0
    for source in map(Path, experiment.responses):
        if not source.is_file():
            from teachfit.records import InputError

            raise InputError(experiment.path, None, f"responses: file not found: {source}")
        target = run.responses(source.stem)
        if not target.exists() or file_digest([target]) != file_digest([source]):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied += 1
    return copied


def _datasets(run: RunDir, experiment: Experiment) -> list[str]:
    """Datasets a student is trained on: every teacher's and selection's, or those train.teacher names."""
    names = [p.stem for p in run.response_files()]
    names += [p.stem for p in sorted(run.selections_dir.glob("*.jsonl"))] if run.selections_dir.is_dir() else []
    wanted = experiment.stages["train"].teacher
    return [n for n in names if not wanted or n in wanted]


def _jobs(stage: str, experiment: Experiment, run: RunDir) -> Iterator[tuple[str, str, Any]]:
    """(marker name, fingerprint, config to run) for each unit of work of a stage."""
    config = experiment.stages[stage]
    responses = run.response_files()
    if stage == "generate":
        yield stage, fingerprint(_settings(config), file_digest(map(Path, config.instructions))), config
    elif stage == "score":
        yield stage, fingerprint(_settings(config), file_digest(responses)), config
    elif stage == "select":
        for item in config:
            name = stage_functions.selection_name(item)
            yield f"select-{name}", fingerprint(_settings(item), file_digest(run.score_files())), item
    elif stage == "rank":
        selections = sorted(run.selections_dir.glob("*.jsonl")) if run.selections_dir.is_dir() else []
        yield stage, fingerprint(_settings(config), file_digest(run.score_files() + selections)), config
    elif stage == "train":
        for student in experiment.stages["score"].student:
            short = stage_functions.student_name(student)
            for dataset in _datasets(run, experiment):
                source = run.responses(dataset) if run.responses(dataset).exists() else run.selection(dataset)
                job = replace(config, data=[str(source)], student=student, out=str(run.checkpoint(short, dataset)),
                              teacher=[])
                yield f"train-{short}--{dataset}", fingerprint(_settings(job), file_digest([source])), job
    elif stage == "evaluate":
        for item in config:  # one item per bench (the experiment file refuses two)
            inputs = [Path(item.ifeval_prompts)] if item.ifeval_prompts else []
            for checkpoint in run.checkpoints():
                job = replace(item, model=f"hf:{checkpoint}", out=str(run.evaluations_dir))
                digest = file_digest([checkpoint / "teachfit_train.json"] + inputs)
                yield f"evaluate-{bench_name(item.bench)}-{checkpoint.name}", fingerprint(_settings(job), digest), job
    elif stage == "correlate":
        job = replace(config, run_dir=str(run.root))
        yield stage, fingerprint(_settings(config), file_digest([run.ranking_csv, run.results_csv])), job
    elif stage == "report":
        job = replace(config, run_dir=str(run.root))
        inputs = [run.ranking_csv, run.results_csv, run.correlation_csv]
        yield stage, fingerprint(_settings(config), file_digest(inputs)), job


def _work(stage: str, config: Any, experiment: Experiment, run: RunDir) -> str:
    """How much a stage would compute, in words (for --dry-run)."""
    if stage == "generate":
        items = stage_functions.pick_instructions(config)
        from teachfit.generate import read_done

        missing = sum(len(items) * r.settings.n - len(read_done(run.responses(r.name), r))
                      for r in stage_functions.teacher_requests(config))
        return f"{missing} answers to generate ({len(items)} instructions x {len(config.teacher)} teachers)"
    if stage == "score":
        from teachfit.score import count_rows

        pairs = count_rows(run.response_files())
        if "generate" in experiment.stages:  # the answers generate will add
            generate = experiment.stages["generate"]
            pairs = max(pairs, len(stage_functions.pick_instructions(generate)) * sum(
                r.settings.n for r in stage_functions.teacher_requests(generate)))
        return f"up to {pairs} pairs x {len(config.student)} students (cached pairs are not recomputed)"
    if stage == "train":
        return f"1 checkpoint ({config.student} on {Path(config.data[0]).stem})"
    if stage == "evaluate":
        return f"answers and judgments for {config.model}"
    return "cheap (no model)"


def run_experiment(path: str | Path, run_dir: str | Path | None = None, only: Sequence[str] | None = None,
                   executor: str | None = None, dry_run: bool = False, show: Any = print) -> dict[str, Any]:
    """Run (or, with dry_run, plan) every stage of an experiment file; returns per-stage stats
    (or the plan: one row per unit of work with its status)."""
    from teachfit.executors import make_executor

    experiment = load_experiment(path, run_dir)
    if executor:
        experiment.executor = replace(experiment.executor, type=executor)
    unknown = [s for s in only or () if s not in STAGE_ORDER]
    if unknown:
        from teachfit.records import InputError

        raise InputError("--only", None, f"unknown stage(s) {unknown}; stages: {', '.join(STAGE_ORDER)}")
    run = RunDir(experiment.run_dir)
    wanted = [s for s in STAGE_ORDER if s in experiment.stages and (not only or s in only)]
    plan: list[dict[str, Any]] = []
    if not dry_run:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_manifest({"experiment": str(experiment.path), "sections": experiment.raw,
                            "executor": asdict(experiment.executor)})
        import_responses(experiment, run)
    runner = make_executor(experiment.executor) if not dry_run else None
    results: dict[str, Any] = {}
    for stage in wanted:
        for marker, key, config in _jobs(stage, experiment, run):
            done = run.is_done(marker, key)
            if dry_run:
                plan.append({"stage": marker, "status": "done" if done else "to run",
                             "work": "-" if done else _work(stage, config, experiment, run)})
                continue
            if done:
                show(f"[{marker}] done (unchanged)")
                results[marker] = run.done_stats(marker)
                continue
            show(f"[{marker}] running")
            stats, seconds = stage_functions.timed(stage_functions.STAGES[stage], config, run, runner)
            stats = _summary(stage, stats) | {"seconds": seconds}
            run.mark_done(marker, key, stats)
            results[marker] = stats
            show(f"[{marker}] finished in {seconds}s")
    if dry_run:
        return {"run_dir": str(run.root), "plan": plan}
    if "rank" in wanted:
        _print_rankings(run, show)
    return {"run_dir": str(run.root), "stages": results}


def _summary(stage: str, stats: Any) -> dict[str, Any]:
    """What a stage's marker keeps of its result (plain data)."""
    if stage == "rank":
        return {"recommended": {s: k.recommended for s, k in stats.items()}}
    if stage == "evaluate":
        return {"results": stats["results"]}
    if stage == "correlate":
        return {"metrics": len(stats["correlation"])}
    if stage == "train":
        return {k: stats[k] for k in ("global_step", "train_loss", "counts")}
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, dict, list))}


def _print_rankings(run: RunDir, show: Any) -> None:
    """The ranking tables the rank stage wrote (from ranking.json: nothing is recomputed)."""
    import json

    from teachfit.rank import ranking_text

    data = json.loads(run.ranking_json.read_text())
    for ranking in data.values():
        show("\n" + ranking_text(ranking))


def plan_text(result: dict[str, Any]) -> str:
    """The dry-run plan as a table."""
    width = max([len(r["stage"]) for r in result["plan"]] + [5])
    lines = [f"run directory: {result['run_dir']}", f"{'stage':<{width}}  {'status':<7}  work"]
    lines += [f"{r['stage']:<{width}}  {r['status']:<7}  {r['work']}" for r in result["plan"]]
    return "\n".join(lines)
