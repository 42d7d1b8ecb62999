"""Stage `generate`: instructions x teachers -> one response dataset per teacher and setting.

Each dataset is RUN/responses/<name>.jsonl; every answer is appended and flushed as soon as it
exists, so a killed run resumes where it stopped and ends with each (instruction, sample)
answered exactly once. Best-/worst-of-N (paper Table 3) keeps all N samples in
RUN/samples/<name>.jsonl and selects by a reward model.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import parse_qsl

from teachfit.instructions import Instruction
from teachfit.models.base import GenerationSettings, user_messages

SETTING_TYPES = {"temperature": float, "top_p": float, "max_new_tokens": int, "seed": int, "n": int, "select": str}


@dataclass(frozen=True)
class TeacherRequest:
    """One dataset to generate: a model spec, its sampling settings and the dataset's name."""

    spec: str
    settings: GenerationSettings
    name: str


def short_model_name(spec: str) -> str:
    """A readable name from a spec: the last path or id component, without .gguf."""
    body = spec.split(":", 1)[1] if ":" in spec else spec
    body = body.split("@")[0].rstrip("/")
    return re.sub(r"\.gguf$", "", body.split("/")[-1]) or "teacher"


def dataset_name(spec: str, settings: GenerationSettings) -> str:
    """`<model>` for greedy decoding, with -t<T>-p<P> for sampling and -best<N>/-worst<N> for selection."""
    name = short_model_name(spec)
    if settings.temperature > 0:
        name += f"-t{settings.temperature:g}-p{settings.top_p:g}"
    if settings.select:
        name += f"-{settings.select}{settings.n}"
    elif settings.n > 1:
        name += f"-n{settings.n}"
    return name


def parse_teacher(text: str, defaults: GenerationSettings) -> TeacherRequest:
    """Parse `SPEC[?key=value&...]`; keys: temperature, top_p, max_new_tokens, seed, n, select, name."""
    spec, name, overrides = text, None, {}
    if "?" in text and "=" in text.rsplit("?", 1)[1]:
        spec, query = text.rsplit("?", 1)
        for key, value in parse_qsl(query, strict_parsing=True):
            if key == "name":
                name = value
            elif key in SETTING_TYPES:
                overrides[key] = SETTING_TYPES[key](value)
            else:
                raise ValueError(f"teacher '{text}': unknown setting '{key}' (known: {', '.join(SETTING_TYPES)}, name)")
    settings = replace(defaults, **overrides)
    validate_settings(settings, text)
    return TeacherRequest(spec=spec, settings=settings, name=name or dataset_name(spec, settings))


def validate_settings(settings: GenerationSettings, label: str) -> None:
    """Reject settings that cannot mean anything, naming the teacher."""
    if settings.select not in (None, "best", "worst"):
        raise ValueError(f"teacher '{label}': select must be best or worst")
    if settings.select and settings.n < 2:
        raise ValueError(f"teacher '{label}': select={settings.select} needs n >= 2 samples")
    if settings.temperature < 0 or not 0 < settings.top_p <= 1 or settings.max_new_tokens < 1 or settings.n < 1:
        raise ValueError(f"teacher '{label}': need temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, n >= 1")


def _record_key(record: dict[str, Any]) -> tuple[str, int]:
    return str(record["instruction_id"]), int(record["sample"])


def _latest(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (instruction, sample): the last finished record in the file, else its last error
    (torn lines from a kill are skipped)."""
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
            if not record.get("error") or key not in latest or latest[key].get("error"):
                latest[key] = record
    return latest


def read_done(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished answers already in a dataset file (the last per key; errors and torn lines skipped)."""
    return {key: record for key, record in _latest(path).items() if not record.get("error")}


def compact(path: Path, order: Sequence[Instruction], n: int) -> int:
    """Rewrite a dataset file with one record per (instruction, sample), in instruction order:
    the finished answer if any, else the last error. Returns the number of errors left."""
    latest = _latest(path)
    rows = [latest[(i.id, k)] for i in order for k in range(n) if (i.id, k) in latest]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
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
               show_progress: bool = True) -> dict[str, Any]:
    """Make sure `path` holds every (instruction, sample) of `request`; returns counts and speed."""
    from tqdm.auto import tqdm

    settings = request.settings
    done = read_done(path)
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
            for start in range(0, len(todo), teacher.batch_size):
                chunk = todo[start : start + teacher.batch_size]
                generations = teacher.generate([user_messages(i.text) for i, _ in chunk], settings,
                                               [settings.sample_seed(i.id, k) for i, k in chunk])
                for (instruction, sample), generation in zip(chunk, generations):
                    record = _record(instruction, sample, request, backend, generation,
                                     settings.n > 1 and not settings.select)
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    stats["generated"] += generation.error is None
                    stats["completion_tokens"] += generation.completion_tokens
                handle.flush()
                os.fsync(handle.fileno())
                elapsed = time.perf_counter() - started
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{stats['completion_tokens'] / max(elapsed, 1e-9):.1f}")
        stats["seconds"] = round(time.perf_counter() - started, 3)
    stats["errors"] = compact(path, instructions, settings.n) if path.exists() else 0
    stats["tokens_per_second"] = round(stats["completion_tokens"] / stats["seconds"], 2) if stats["seconds"] else None
    return stats


def select_by_reward(samples_path: Path, out_path: Path, request: TeacherRequest, reward_scorer: Any,
                     cache_root: Path) -> dict[str, Any]:
    """Write one response per instruction: the highest- (best) or lowest-reward (worst) sample."""
    from teachfit.records import Pair
    from teachfit.score import ScoreOptions, score_pairs

    records = [json.loads(line) for line in samples_path.open(encoding="utf-8") if line.strip()]
    records = [r for r in records if not r.get("error") and r["response"].strip()]
    pairs = [Pair(f"{r['instruction_id']}#s{r['sample']}", r["instruction"], r["response"], request.name) for r in records]
    rewards = [row["reward"] for row in score_pairs(pairs, [reward_scorer], cache_root, ScoreOptions(window=64))]
    candidates: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for record, reward in zip(records, rewards):
        candidates.setdefault(record["instruction_id"], []).append((reward, record))
    pick = max if request.settings.select == "best" else min
    rows = []
    for options in candidates.values():
        reward, record = pick(options, key=lambda option: option[0])
        rows.append(dict(record, id=record["instruction_id"], selected_reward=reward,
                         candidate_rewards=[r for r, _ in options],
                         selection={"select": request.settings.select, "n": request.settings.n,
                                    "reward_model": reward_scorer.describe()}))
    from teachfit.records import write_jsonl

    write_jsonl(out_path, rows)
    return {"dataset": request.name, "selected": len(rows)}


def generate(instructions: Sequence[Instruction], requests: Iterable[TeacherRequest], run_dir: str | Path,
             load_options: dict[str, Any] | None = None, reward_loader: Any = None,
             show_progress: bool = True) -> list[dict[str, Any]]:
    """Generate every requested dataset into `run_dir`; returns one summary per dataset and
    records them (with settings and versions) in RUN/generate.json."""
    from teachfit.models import load
    from teachfit.versions import versions

    run_dir = Path(run_dir)
    load_options = load_options or {}
    requests = list(requests)
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise ValueError(f"two teachers would write the same dataset name: {names}; add ?name=... to one")
    summaries = []
    for request in requests:
        final = run_dir / "responses" / f"{request.name}.jsonl"
        target = run_dir / "samples" / f"{request.name}.jsonl" if request.settings.select else final
        stats = answer_all(instructions, request, target, lambda spec: load("teacher", spec, **load_options),
                           show_progress)
        if request.settings.select:
            if reward_loader is None:
                raise ValueError(f"teacher '{request.name}': select={request.settings.select} needs --reward-model")
            stats |= select_by_reward(target, final, request, reward_loader(), run_dir / ".cache" / "rewards")
        stats["settings"] = request.settings.to_dict()
        stats["spec"] = request.spec
        summaries.append(stats)
    manifest = run_dir / "generate.json"
    previous = json.loads(manifest.read_text()) if manifest.exists() else {}
    datasets = previous.get("datasets", {}) | {s["dataset"]: s for s in summaries}
    manifest.write_text(json.dumps({"datasets": datasets, "versions": versions()}, indent=2))
    return summaries
