"""The stages, each one function (config, run directory, executor) -> stats.

The CLI commands and `teachfit run` are thin layers over these; each reads what the previous
stage left in the run directory and writes its own outputs there (RunDir owns the paths).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from teachfit.config import (CorrelateConfig, EvaluateConfig, GenerateConfig, RankConfig, ReportConfig, ScoreConfig,
                             SelectConfig, TrainConfig)
from teachfit.run import RunDir, safe_name


def student_name(spec: str) -> str:
    """The file-name form of a student spec (the last path or id component)."""
    from teachfit.generate import short_model_name

    return safe_name(short_model_name(spec), "student name")


def pick_instructions(config: GenerateConfig) -> list[Any]:
    """The instructions a generate config names, after per_category and limit."""
    from teachfit.instructions import read_instructions

    items = read_instructions(config.instructions, skip_invalid=config.skip_invalid)
    if config.per_category:
        taken: dict[str, int] = {}
        chosen = []
        for item in items:
            if taken.get(item.category, 0) < config.per_category:
                chosen.append(item)
                taken[item.category] = taken.get(item.category, 0) + 1
        items = chosen
    return items[: config.limit] if config.limit else items


def teacher_requests(config: GenerateConfig) -> list[Any]:
    """The datasets a generate config asks for (teacher specs with their sampling settings)."""
    from teachfit.generate import parse_teacher
    from teachfit.models.base import GenerationSettings

    defaults = GenerationSettings(config.temperature, config.top_p, config.max_new_tokens, config.seed, config.n)
    return [parse_teacher(text, defaults) for text in config.teacher]


def run_generate(config: GenerateConfig, run: RunDir, executor: Any = None) -> dict[str, Any]:
    """instructions x teachers -> RUN/responses/<dataset>.jsonl (resumes; a new teacher runs alone)."""
    from teachfit.generate import generate

    items = pick_instructions(config)
    if not items:
        raise ValueError(f"no instructions in {', '.join(config.instructions)}")
    summaries = generate(items, teacher_requests(config), run, config.load_options() | config.server_options(),
                         show_progress=config.progress, executor=executor)
    return {"instructions": len(items), "datasets": summaries,
            "failed": sum(s["errors"] for s in summaries), "generated": sum(s["generated"] for s in summaries)}


def score_inputs(config: ScoreConfig, run: RunDir | None) -> list[Path]:
    """The response files to score: the config's inputs, else the run's datasets."""
    from teachfit.records import expand_inputs

    if config.inputs:
        return expand_inputs(config.inputs)
    return run.response_files() if run else []


def score_shard(task: dict[str, Any]) -> int:
    """One executor worker: score its share of the pairs into the shared cache (each process
    writes its own cache shard files), then leave a completion marker. Shards are whole windows
    (window index % world == rank), so every batch is the one the local executor would form and
    the results are equal bit for bit."""
    from teachfit.records import read_pairs
    from teachfit.score import build_scorers, score_pairs

    config: ScoreConfig = task["config"]
    scorers = build_scorers(task["student"], config.reference, config.reward_model, config.reward_kind, config,
                            config.reward_column, task["paths"])
    rank, world = task["rank"], task["world"]
    pairs = (p for i, p in enumerate(read_pairs(task["paths"], skip_invalid=config.skip_invalid,
                                                reward_column=config.reward_column)) if (i // config.window) % world == rank)
    count = sum(1 for _ in score_pairs(pairs, scorers, task["cache"], config))
    Path(task["marker"]).parent.mkdir(parents=True, exist_ok=True)
    Path(task["marker"]).write_text(json.dumps({"pairs": count}))
    return count


def run_score(config: ScoreConfig, run: RunDir | None, executor: Any = None) -> dict[str, Any]:
    """Every pair x every student -> RUN/scores/<student>.parquet (or config.out); cached per pair,
    so a re-run, a new teacher or a new student computes only what is missing."""
    from teachfit.run import fingerprint
    from teachfit.score import score_files

    paths = score_inputs(config, run)
    if not paths:
        raise ValueError("nothing to score: give response files or a run directory")
    if not config.student:
        raise ValueError("give --student")
    if config.out and len(config.student) > 1:
        raise ValueError("--out names one file: score several students into a run directory instead")
    cache = run.cache("scores") if run else Path(config.out or "scores.parquet").parent / ".teachfit_cache" / "scores"
    results = {}
    for student in config.student:
        out = Path(config.out) if config.out else run.scores(student_name(student)) if run else Path("scores.parquet")
        world = getattr(executor, "world_size", 1)
        if world > 1:
            key = fingerprint(student, config, [str(p) for p in paths])
            tasks = [{"config": config, "student": student, "paths": paths, "cache": str(cache), "rank": rank,
                      "world": world, "marker": str(run.shard_marker("score", key, rank, world))}
                     for rank in range(world) if not run.shard_marker("score", key, rank, world).exists()]
            executor.map(score_shard, tasks)
        meta = score_files(paths, out, student, config.reference, config.reward_model, config.reward_kind, config,
                           cache, show_progress=config.progress, reward_column=config.reward_column)
        results[student] = {"out": str(out), "counts": meta["counts"], "seconds": meta["seconds"]}
    return {"students": results}


def _selection_rows(run: RunDir, scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score rows of every selection in the run, relabelled with the selection's name, so that
    selections are ranked beside whole teachers."""
    by_pair = {(str(r["teacher"]), str(r["id"])): r for r in scores}
    rows = []
    for path in sorted(run.selections_dir.glob("*.jsonl")) if run.selections_dir.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            row = by_pair.get((str(record["teacher"]), str(record["id"])))
            if row is not None:
                rows.append(dict(row, teacher=path.stem))
    return rows


def score_files_of(inputs: list[str], run: RunDir | None) -> list[Path]:
    """Score files named directly or inside run directories, else the run's own."""
    files = [f for p in map(Path, inputs) for f in (RunDir(p).score_files() if p.is_dir() else [p])]
    return files or (run.score_files() if run else [])


def run_rank(config: RankConfig, run: RunDir | None, executor: Any = None) -> Any:
    """Scores -> one ranking per student, written to RUN/ranking.csv and ranking.json (a
    `student` column tells them apart). Returns the rankings (teachfit.rank.Ranking), by student."""
    from teachfit.rank import pairs_needed, rank_teachers, student_of
    from teachfit.records import read_table, write_table

    files = score_files_of(config.scores, run)
    if not files:
        raise ValueError("no score files: run `teachfit score` first")
    rankings = {}
    for path in files:
        rows, meta = read_table(path)
        student = student_of(meta) or path.stem
        if run is not None:
            rows = rows + _selection_rows(run, rows)
        ranking = rank_teachers(rows, beta=config.beta, reward_transform=config.reward_transform,
                                n_bootstrap=config.bootstrap, seed=config.seed, student=student)
        ranking.settings["scores"] = str(path)
        if config.target:
            ranking.settings["pairs_needed"] = pairs_needed(rows, config.beta, config.reward_transform, config.target,
                                                            n_bootstrap=config.bootstrap or 1000, seed=config.seed)
        rankings[student] = ranking
    if run is not None:
        write_table(run.ranking_csv, [r for k in rankings.values() for r in k.rows], {"stage": "rank"})
        run.ranking_json.write_text(json.dumps({s: k.to_dict() for s, k in rankings.items()}, indent=2))
    return rankings


def selection_name(config: SelectConfig) -> str:
    """`<method>` or `<teacher>-<best|worst>-<method>`, unless the config names it."""
    if config.name:
        return safe_name(config.name, "selection name")
    stem = f"{config.teacher}-" if config.teacher else ""
    return safe_name(f"{stem}{'worst' if config.worst else 'best'}-{config.by}" if config.teacher or config.worst
                     else config.by, "selection name")


def run_select(config: SelectConfig, run: RunDir | None, executor: Any = None) -> dict[str, Any]:
    """Scores -> one response per instruction (RUN/selections/<name>.jsonl, and config.out)."""
    from teachfit.records import read_pairs, read_table
    from teachfit.select import select_pairs, write_selection

    files = score_files_of(config.inputs, run)
    if not files:
        raise ValueError("no score files to select from: run `teachfit score` first")
    rows, meta = read_table(files[0])  # every student's file has the same pairs; the first student selects
    if config.teacher:
        rows = [r for r in rows if str(r["teacher"]) == config.teacher]
        if not rows:
            raise ValueError(f"no scored pairs of teacher '{config.teacher}' in {files[0]}")
    selection = select_pairs(rows, config.by, beta=config.beta, alpha=config.alpha, seed=config.seed,
                             reward_transform=config.reward_transform, worst=config.worst)
    pairs = list(read_pairs([Path(p) for p in meta.get("inputs", [])]))
    # the run's own copy is in the messages format, which train and rank read; --out in the one asked for
    outs = [(run.selection(selection_name(config)), "messages")] if run else []
    outs += [(Path(config.out), config.format)] if config.out else []
    if not outs:
        raise ValueError("give --out (or a run directory)")
    summary = {}
    for out, fmt in outs:
        summary = write_selection(selection, pairs, out, fmt)
    return summary | {"written": [str(out) for out, _ in outs]}


def run_train(config: TrainConfig, run: RunDir | None, executor: Any = None) -> dict[str, Any]:
    """SFT of config.student on config.data (filtered to config.teacher datasets) into config.out."""
    from teachfit.train import train_student

    if not config.student or not config.out:
        raise ValueError("give --student and --out")
    return train_student(config.data, config.student, config.out, config, config.teacher or None,
                         show_progress=config.progress)


def run_evaluate(config: EvaluateConfig, run: RunDir | None, executor: Any = None) -> dict[str, Any]:
    """A model's answers judged against the baseline -> evaluations/, results.csv."""
    from teachfit.evaluate import result_labels, run_evaluation
    from teachfit.truth import JUDGE_FREE, run_truth

    out = Path(config.out) if config.out else run.evaluations_dir if run else Path("evaluations")
    results_csv = run.results_csv if run else out / "results.csv"
    if config.bench in JUDGE_FREE:  # IFEval, or the absolute rating: no baseline, no pairwise judge
        return run_truth(config, out, results_csv)
    if not config.model or not config.judge:
        raise ValueError("give --model and --judge")
    return run_evaluation(config, out, result_labels(config), results_csv)


def run_correlate(config: CorrelateConfig, run: RunDir | None, executor: Any = None) -> dict[str, Any]:
    """Rankings + measured results -> Spearman rho per metric (RUN/correlation.csv)."""
    from teachfit.correlate import beta_sweep, correlation_table, fit_beta, join, read_rankings, read_truth
    from teachfit.records import InputError, write_table

    run = run or (RunDir(config.run_dir) if config.run_dir else None)
    files = [Path(m) for m in config.metrics] + ([run.ranking_csv] if run and run.ranking_csv.exists() else [])
    truth = Path(config.truth) if config.truth else run.results_csv if run else None
    out = Path(config.out) if config.out else run.correlation_csv if run else None
    if not files or truth is None:
        raise ValueError("give a run directory, or --metrics files and --truth")
    joined = join(read_rankings(files), read_truth(truth, config.truth_column), config.truth_column)
    if not joined:
        raise InputError(truth, None, f"no (student, teacher) appears in both {', '.join(map(str, files))} and {truth}")
    table = correlation_table(joined, config.bootstrap)
    report = {"correlation": table, "beta_sweep": beta_sweep(joined), "truth_column": config.truth_column}
    if config.fit_beta:
        report["fit_beta"] = fit_beta(joined)
    if out:
        write_table(out, table, {"metrics": [str(f) for f in files], "truth": str(truth), "truth_column": config.truth_column,
                                 "beta_sweep": report["beta_sweep"], "fit_beta": report.get("fit_beta")})
    return report


def run_report(config: ReportConfig, run: RunDir | None, executor: Any = None) -> dict[str, Any]:
    """The run's tables and plots -> one self-contained HTML page."""
    from teachfit.report import build_report

    run = run or (RunDir(config.run_dir) if config.run_dir else None)
    out = Path(config.out) if config.out else run.report_html if run else Path("report.html")
    return build_report(run.root if run else None, out, config.paper)


STAGES = {"generate": run_generate, "score": run_score, "select": run_select, "rank": run_rank, "train": run_train,
          "evaluate": run_evaluate, "correlate": run_correlate, "report": run_report}


def timed(function: Any, *args: Any) -> tuple[Any, float]:
    """(function(*args), seconds it took)."""
    started = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - started, 1)
