"""The `score` stage: every pair x every student -> RUN/scores/<student>.parquet.

Scores are cached per pair (teachfit.score), so a re-run, a new teacher or a new student computes
only what is missing. With an executor of several workers, each worker scores whole windows
(window index % world == rank) into the shared cache and leaves a completion marker; the driver
then only reads the cache and writes the table (it loads no model: every pair is cached).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from teachfit.config import ScoreConfig
from teachfit.env import cache_root
from teachfit.run import RunDir, settings_of
from teachfit.score.base import is_cached
from teachfit.stage import Plan, Stage, Unit


def score_inputs(config: ScoreConfig, run: Any) -> list[Path]:
    """The response files to score: the config's inputs, else the run's datasets."""
    from teachfit.files import expand_inputs

    if config.inputs:
        return expand_inputs(config.inputs)
    return run.response_files() if run else []


def score_shard(task: dict[str, Any]) -> int:
    """One executor worker: score its share of the pairs into the shared cache (each process
    writes its own cache shard files), then leave a completion marker holding the key material of
    its scorers, computed where the models run (a GPU worker's dtype, not the driver's). Shards are
    whole windows, so every batch is the one the local executor would form and the results are
    equal bit for bit."""
    from teachfit.atomic import write_json_atomic
    from teachfit.files import read_pairs
    from teachfit.score.engine import score_pairs
    from teachfit.score.scorers import build_scorers

    config: ScoreConfig = task["config"]
    scorers = build_scorers(task["student"], config, task["paths"])
    rank, world = task["rank"], task["world"]
    def pairs() -> Any:
        read = read_pairs(task["paths"], skip_invalid=config.skip_invalid, reward_column=config.reward_column)
        return (p for i, p in enumerate(read) if (i // config.window) % world == rank)

    count = sum(1 for _ in score_pairs(pairs, scorers, task["cache"], config))
    write_json_atomic(Path(task["marker"]), {"pairs": count, "key_material": [s.key_material() for s in scorers]})
    return count


def workers_key_material(markers: list[Path]) -> list[Any] | None:
    """The key material the workers' scorers had (from their completion markers): the driver keys
    the cache with it, so the workers' results are found even when the driver would pick another
    dtype (a CPU driver of GPU workers). None when no marker says; InputError when workers differ."""
    import json

    from teachfit.records import InputError

    found = []
    for marker in markers:
        try:
            material = json.loads(marker.read_text(encoding="utf-8")).get("key_material")
        except (OSError, ValueError, AttributeError):
            material = None
        if material is not None:
            found.append(material)
    if any(m != found[0] for m in found):
        raise InputError(markers[0].parent, None, "the workers scored with different settings (e.g. dtypes: a "
                                                  "mix of GPU kinds); give --dtype explicitly")
    return found[0] if found else None


def run_score(config: ScoreConfig, run: Any, executor: Any = None) -> dict[str, Any]:
    """Every pair x every student -> RUN/scores/<student>.parquet (or config.out)."""
    from teachfit.run import fingerprint
    from teachfit.score.engine import score_files
    from teachfit.score.scorers import build_scorers
    from teachfit.teachers import student_name

    paths = score_inputs(config, run)
    if not paths:
        raise ValueError("nothing to score: give response files or a run directory")
    if not config.student:
        raise ValueError("give --student")
    if config.out and len(config.student) > 1:
        raise ValueError("--out names one file: score several students into a run directory instead")
    world = getattr(executor, "world_size", 1)
    if world > 1 and run is None:
        raise ValueError("--executor ray needs a run directory (its shards leave completion markers there)")
    # in a run, its own cache; outside one, the user's cache: a new --out folder reuses every score
    cache = run.cache("scores") if run else cache_root() / "scores"
    results = {}
    for student in config.student:
        out = Path(config.out) if config.out else run.scores(student_name(student)) if run else Path("scores.parquet")
        scorers = build_scorers(student, config, paths)
        if world > 1:
            key = fingerprint(student, settings_of(config), [str(p) for p in paths])  # not the progress bar
            markers = [run.shard_marker("score", key, rank, world) for rank in range(world)]
            tasks = [{"config": config, "student": student, "paths": paths, "cache": str(cache), "rank": rank,
                      "world": world, "marker": str(marker)} for rank, marker in enumerate(markers) if not marker.exists()]
            executor.map(score_shard, tasks)
            materials = workers_key_material(markers)
            for scorer, material in zip(scorers, materials or []):
                if is_cached(scorer) and material != scorer.key_material():
                    scorer.keyed(material)  # the workers' keys: their dtype, not this driver's
        meta = score_files(paths, out, student, config, cache, scorers=scorers)
        results[student] = {"out": str(out), "counts": meta["counts"], "seconds": meta["seconds"]}
    return {"students": results}


def default_metrics(config: ScoreConfig, plan: Plan) -> None:
    """Without `score.metrics`, compute what the later stages use: correlate and report compare every
    column; rank recommends by CAR and select needs no loss(y), so without them the IFD pass is skipped."""
    from teachfit.config import SCORE_METRICS

    if "metrics" in (plan.raw.get("score") or {}) or {"correlate", "report"} & set(plan.sections):
        return
    rewarded = config.reward_model or config.reward_column
    config.metrics = [name for name in SCORE_METRICS if not name.startswith("ifd_")
                      and (config.reference or not name.endswith("_ref")) and (rewarded or name not in ("car", "reward"))]


def _plan(config: ScoreConfig, plan: Plan) -> None:
    from teachfit.models import ModelSpec
    from teachfit.teachers import student_name

    if not config.student:
        plan.fail(("score",), "'score' needs 'student'")
    if not plan.of("dataset") and "generate" not in plan.sections:
        plan.fail(("score",), "nothing to score: add a 'generate' section or 'responses' files")
    for key in ("student", "reference", "reward_model"):
        value = getattr(config, key)
        for index, spec in enumerate(value if isinstance(value, list) else [value] if value else []):
            where = ("score", key, index) if isinstance(value, list) else ("score", key)
            try:
                ModelSpec.parse(spec)
                name = student_name(spec) if key == "student" else None
            except ValueError as error:
                plan.fail(where, str(error))
            if name:
                plan.add("student", name, where, f"score student {index + 1} ({spec})")
    default_metrics(config, plan)


def _units(config: ScoreConfig, plan: Plan, run: Any) -> list[Unit]:
    from dataclasses import replace

    from teachfit.files import count_records as count_rows
    from teachfit.teachers import student_name

    datasets = [run.responses(name) for name in plan.of("dataset") if name not in plan.of("selection")]

    def work() -> str:
        pairs = count_rows([p if p.exists() else plan.given[p.stem] for p in datasets
                            if p.exists() or p.stem in plan.given])
        if "generate" in plan.sections:  # the answers generate will add
            from teachfit.generate import pick_instructions, teacher_requests

            generate = plan.sections["generate"]
            pairs = max(pairs, len(pick_instructions(generate)) * sum(r.settings.n for r in teacher_requests(generate)))
        return f"up to {pairs} pairs (cached pairs are not recomputed)"

    return [Unit(f"score-{student_name(student)}", replace(config, student=[student]), inputs=datasets,
                 outputs=[run.scores(student_name(student))], work=work) for student in config.student]


def _line(stats: dict[str, Any]) -> str:
    parts = []
    for student, s in stats["students"].items():
        counts = s["counts"]
        cached = f"; {counts['cached']} from cache, {counts['computed']} computed" if "computed" in counts else ""
        parts.append(f"{student}: scored {counts['scored']} pairs ({counts['truncated']} truncated, "
                     f"{counts['skipped']} skipped{cached}) in {s['seconds']:.1f}s -> {s['out']}")
    return "; ".join(parts)


STAGE = Stage(
    name="score", config=ScoreConfig, run=run_score, plan=_plan, units=_units, line=_line, sharded=True,
    text=lambda stats: _line(stats).replace("; ", "\n"), run_dir_of=lambda config: RunDir.among(config.inputs),
    needs=("generate",),
    help="Score every (instruction, response) pair: student loss/PPL/IFD/RSR, reference PPL/IFD, reward, length.",
    summary=lambda stats: {"students": {s: {k: v for k, v in r.items()} for s, r in stats["students"].items()}},
)
