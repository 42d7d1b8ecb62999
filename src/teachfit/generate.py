"""Stage `generate`: instructions x teachers -> one response dataset per teacher and setting.

Each dataset is RUN/responses/<name>.jsonl; every answer is appended and flushed as soon as it
exists, so a killed run resumes where it stopped and ends with each (instruction, sample)
answered exactly once. With n > 1 samples per instruction every sample is kept (ids
`<instruction>#s<k>`); picking one of them (best-/worst-of-N, paper Table 3) is the `select`
stage's job, from the scores, so data flows one way.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from teachfit.atomic import write_json_atomic
from teachfit.config import GenerateConfig
from teachfit.env import free_accelerator_memory
from teachfit.files import write_jsonl
from teachfit.instructions import Instruction
from teachfit.ledger import ledger_line, read_prices, write_ledger
from teachfit.models.base import GenerationSettings, user_messages
from teachfit.models.spec import uses_batch_api
from teachfit.stage import Plan, Stage, Unit
from teachfit.teachers import TeacherRequest, parse_teacher

def _record_key(record: dict[str, Any]) -> tuple[str, int]:
    return str(record["instruction_id"]), int(record["sample"])


def reusable(record: dict[str, Any], request: TeacherRequest | None) -> bool:
    """Whether a stored record answers `request`: made by the same model spec (engine options
    included) with the same settings (max_new_tokens, sampling, seed; a setting the record does not
    store counts as the same, and n does not matter: each sample is made alone). Without a request,
    every record."""
    if request is None:
        return True
    if record.get("model", request.spec) != request.spec:
        return False
    stored = record.get("gen_response_configs")
    stored = stored if isinstance(stored, dict) else {}
    return all(stored.get(k, v) == v for k, v in request.settings.to_dict().items() if k != "n")


def _latest(path: Path, request: TeacherRequest | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (instruction, sample): the last finished record in the file, else its last error
    (torn lines from a kill are skipped; with a request, so are the records made otherwise: a
    different model, engine options or settings)."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    if not path.exists():
        return latest
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                key = _record_key(record)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if not reusable(record, request):
                continue
            if not record.get("error") or key not in latest or latest[key].get("error"):
                latest[key] = record
    return latest


def read_done(path: Path, request: TeacherRequest | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished answers already in a dataset file (the last per key; errors and torn lines skipped,
    and with a request the records it would not reuse)."""
    return {key: record for key, record in _latest(path, request).items() if not record.get("error")}


def compact(path: Path, order: Sequence[Instruction], n: int, request: TeacherRequest | None = None) -> int:
    """Rewrite a dataset file with one record per (instruction, sample), in instruction order:
    the finished answer if any, else the last error (with a request: only its records). Returns
    the number of errors left."""
    latest = _latest(path, request)
    rows = [latest[(i.id, k)] for i in order for k in range(n) if (i.id, k) in latest]
    write_jsonl(path, rows)
    return sum(1 for r in rows if r.get("error"))


def _record(instruction: Instruction, sample: int, request: TeacherRequest, backend: dict[str, Any],
            generation: Any, with_sample_id: bool) -> dict[str, Any]:
    return {
        "id": f"{instruction.id}#s{sample}" if with_sample_id else instruction.id,
        "instruction_id": instruction.id, "sample": sample, "instruction": instruction.text,
        "response": generation.text, "teacher": request.name, "model": request.spec, "category": instruction.category,
        "gen_response_configs": request.settings.to_dict(), "backend": backend,
        "finish_reason": generation.finish_reason, "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens, "seconds": round(generation.seconds, 3),
        "error": generation.error,
    }


def _end_torn_line(path: Path) -> None:
    """Terminate a last line cut by a kill, so that appended records start on a line of their own."""
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def answer_all(instructions: Sequence[Instruction], request: TeacherRequest, path: Path, teacher_loader: Any,
               show_progress: bool = True, batch_state: Path | None = None) -> dict[str, Any]:
    """Make sure `path` holds every (instruction, sample) of `request`; returns counts and speed.
    A teacher behind a provider batch API gets every missing answer at once, its batches recorded
    in `batch_state` (models/openai_batch.py); any other, windows of its batch_size."""
    from tqdm.auto import tqdm

    settings = request.settings
    done = read_done(path, request)  # answers made by another model, engine options or settings are made again
    todo = [(i, k) for i in instructions for k in range(settings.n) if (i.id, k) not in done]
    stats = {"dataset": request.name, "already_done": len(done), "generated": 0, "errors": 0,
             "completion_tokens": 0, "seconds": 0.0}
    if todo:
        teacher = teacher_loader(request.spec)
        backend = teacher.describe()
        path.parent.mkdir(parents=True, exist_ok=True)
        _end_torn_line(path)
        started = time.perf_counter()
        with path.open("a", encoding="utf-8") as handle, tqdm(total=len(todo), desc=request.name, unit="resp",
                                                               disable=not show_progress) as bar:
            def write(chunk: Sequence[tuple[Instruction, int]], generations: Sequence[Any]) -> None:
                for (instruction, sample), generation in zip(chunk, generations):
                    record = _record(instruction, sample, request, backend, generation, settings.n > 1)
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    stats["generated"] += generation.error is None
                    stats["completion_tokens"] += generation.completion_tokens
                handle.flush()
                os.fsync(handle.fileno())
                elapsed = time.perf_counter() - started
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{stats['completion_tokens'] / max(elapsed, 1e-9):.1f}")

            if getattr(teacher, "submits_batches", False):  # custom_id `<instruction id>#s<sample>`
                keyed = {f"{i.id}#s{k}": (i, k) for i, k in todo}
                teacher.run_batches([(key, user_messages(i.text), settings.sample_seed(i.id, k))
                                     for key, (i, k) in keyed.items()], settings, batch_state,
                                    lambda pairs: write([keyed[key] for key, _ in pairs], [g for _, g in pairs]))
            else:
                for start in range(0, len(todo), teacher.batch_size):
                    chunk = todo[start : start + teacher.batch_size]
                    write(chunk, teacher.generate([user_messages(i.text) for i, _ in chunk], settings,
                                                  [settings.sample_seed(i.id, k) for i, k in chunk]))
        stats["seconds"] = round(time.perf_counter() - started, 3)
    stats["errors"] = compact(path, instructions, settings.n, request) if path.exists() else 0
    stats["tokens_per_second"] = round(stats["completion_tokens"] / stats["seconds"], 2) if stats["seconds"] else None
    return stats


def generate(instructions: Sequence[Instruction], requests: Iterable[TeacherRequest], run_dir: Any,
             load_options: dict[str, Any] | None = None, show_progress: bool = True,
             executor: Any = None) -> list[dict[str, Any]]:
    """Generate every requested dataset into the run directory (a RunDir or a path); returns one
    summary per dataset. With an executor of several workers, each dataset's missing answers are
    sharded over them (see generate_shard) and merged into the dataset file."""
    from teachfit.run import RunDir

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    load_options = load_options or {}
    requests = list(requests)
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise ValueError(f"two teachers would write the same dataset name: {names}; add ?name=... to one")
    summaries = []
    for request in requests:
        path = run.responses(request.name)
        batches = uses_batch_api(request.spec)  # one provider batch per dataset: never sharded
        if executor is not None and executor.world_size > 1 and not batches:
            stats = _generate_sharded(instructions, request, path, run, load_options, executor)
        else:
            stats = answer_all(instructions, request, path, lambda spec: _load_teacher(spec, load_options), show_progress,
                               batch_state=run.batch_state(request.name) if batches else None)
        summaries.append(stats | {"settings": request.settings.to_dict(), "spec": request.spec})
        free_accelerator_memory()  # this teacher is dropped: the next one finds its GPU memory
    return summaries


def _load_teacher(spec: str, load_options: dict[str, Any]) -> Any:
    from teachfit.models import load

    return load("teacher", spec, **load_options)


def generate_shard(task: dict[str, Any]) -> dict[str, Any]:
    """One executor worker: answer its share of the instructions into its own shard file, then
    leave a completion marker (datatrove-style). Runs in a Ray worker; loads the teacher once."""
    instructions, request = task["instructions"], task["request"]
    stats = answer_all(instructions, request, Path(task["shard"]),
                       lambda spec: _load_teacher(spec, task["load_options"]), show_progress=False)
    write_json_atomic(Path(task["marker"]), stats)
    return stats


def _generate_sharded(instructions: Sequence[Instruction], request: TeacherRequest, path: Path, run: Any,
                      load_options: dict[str, Any], executor: Any) -> dict[str, Any]:
    """Shard the missing (instruction) answers over the executor's workers, then merge the shard
    files into `path` (compaction keeps one record per (instruction, sample))."""
    from teachfit.run import fingerprint

    done = read_done(path, request)
    todo = [i for i in instructions if any((i.id, k) not in done for k in range(request.settings.n))]
    world = executor.world_size
    key = fingerprint(request.spec, request.settings.to_dict(), [i.id for i in todo])
    shard_dir = run.responses_dir / ".shards" / request.name
    tasks = []
    for rank in range(world):
        marker = run.shard_marker(f"generate-{request.name}", key, rank, world)
        share = todo[rank::world]
        if share and not marker.exists():
            tasks.append({"instructions": share, "request": request, "load_options": load_options,
                          "shard": str(shard_dir / f"{key[:16]}-{rank:05d}.jsonl"), "marker": str(marker)})
    executor.map(generate_shard, tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    _end_torn_line(path)
    with path.open("a", encoding="utf-8") as handle:
        for shard in sorted(shard_dir.glob(f"{key[:16]}-*.jsonl")):
            for record in _latest(shard).values():
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    errors = compact(path, instructions, request.settings.n, request)
    for shard in shard_dir.glob(f"{key[:16]}-*.jsonl"):
        shard.unlink()
    return {"dataset": request.name, "already_done": len(done), "generated": len(read_done(path, request)) - len(done),
            "errors": errors, "shards": world}


# ---- the stage ---------------------------------------------------------------------------------
def pick_instructions(config: GenerateConfig) -> list[Instruction]:
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


def teacher_requests(config: GenerateConfig) -> list[TeacherRequest]:
    """The datasets a generate config asks for (teacher specs with their sampling settings)."""
    defaults = GenerationSettings(config.temperature, config.top_p, config.max_new_tokens, config.seed, config.n)
    return [parse_teacher(text, defaults) for text in config.teacher]


def run_generate(config: GenerateConfig, run: Any, executor: Any = None) -> dict[str, Any]:
    """instructions x teachers -> RUN/responses/<dataset>.jsonl (resumes; a new teacher runs alone)."""
    if not config.teacher or not config.instructions:
        raise ValueError("give --instructions and at least one --teacher")
    items = pick_instructions(config)
    if not items:
        raise ValueError(f"no instructions in {', '.join(config.instructions)}")
    prices = read_prices(config.prices)  # a bad price table stops the run before any model loads
    summaries = generate(items, teacher_requests(config), run, config.load_options() | config.server_options(),
                         show_progress=config.progress, executor=executor)
    ledger = [r for r in write_ledger(getattr(run, "root", run), prices) if r["stage"] == "generate"]
    return {"instructions": len(items), "datasets": summaries, "ledger": ledger,
            "failed": sum(s["errors"] for s in summaries), "generated": sum(s["generated"] for s in summaries)}


def _plan(config: GenerateConfig, plan: Plan) -> None:
    """Every teacher parses and names a dataset no other entry of the study names."""
    for key in ("teacher", "instructions"):
        if not getattr(config, key):
            plan.fail(("generate",), f"'generate' needs '{key}'")
    defaults = GenerationSettings(config.temperature, config.top_p, config.max_new_tokens, config.seed, config.n)
    for index, text in enumerate(config.teacher):
        try:
            name = parse_teacher(text, defaults).name
        except ValueError as error:
            plan.fail(("generate", "teacher", index), str(error))
        plan.add("dataset", name, ("generate", "teacher", index), f"generate teacher {index + 1} ({text})")


def _units(config: GenerateConfig, plan: Plan, run: Any) -> list[Unit]:
    requests = teacher_requests(config)

    def work() -> str:
        items = pick_instructions(config)
        missing = sum(len(items) * r.settings.n - len(read_done(run.responses(r.name), r)) for r in requests)
        return f"{missing} answers to generate ({len(items)} instructions x {len(requests)} teachers)"

    return [Unit("generate", config, inputs=[Path(p) for p in config.instructions],
                 outputs=[run.responses(r.name) for r in requests], work=work)]


def _line(stats: dict[str, Any]) -> str:
    parts = [f"{s['dataset']} {s['generated']} new + {s['already_done']} done"
             + (f", {s['errors']} failed" if s["errors"] else "") for s in stats["datasets"]]
    tokens = ledger_line(stats.get("ledger") or [], "generate")
    return f"{stats['instructions']} instructions: " + "; ".join(parts) + (f" | {tokens}" if tokens else "")


def _text(stats: dict[str, Any]) -> str:
    speed = {s["dataset"]: f", {s['tokens_per_second']} tok/s" if s.get("tokens_per_second") else "" for s in stats["datasets"]}
    tokens = ledger_line(stats.get("ledger") or [], "generate")
    return "\n".join([f"{s['dataset']}: {s['generated']} new, {s['already_done']} already done, {s['errors']} failed"
                      f"{speed[s['dataset']]}" for s in stats["datasets"]] + ([tokens] if tokens else []))


def _failed(stats: dict[str, Any]) -> str | None:
    done = stats["generated"] + sum(s["already_done"] for s in stats["datasets"])
    return f"all {stats['failed']} answers failed (see the error fields); re-run to retry" if stats["failed"] and not done else None


def _run_dir_of(config: GenerateConfig) -> Any:
    from teachfit.run import RunDir

    if not config.out:
        raise ValueError("give --out (the run directory)")
    return RunDir(config.out)


STAGE = Stage(
    name="generate", config=GenerateConfig, run=run_generate, plan=_plan, units=_units, line=_line, sharded=True,
    text=_text, failed=_failed, run_dir_of=_run_dir_of,
    help="Generate responses to an instruction set with one or more teachers (greedy or sampled, N samples).",
    summary=lambda stats: {k: v for k, v in stats.items() if k != "datasets"} | {
        "datasets": [{k: s[k] for k in ("dataset", "generated", "already_done", "errors")} for s in stats["datasets"]]},
)
