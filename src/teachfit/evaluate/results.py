"""What an evaluation leaves: its row of results.csv (student, teacher, model, bench, scores),
its per-prompt rows (JSONL) and its summary file scores-<model>--<bench>.json, all written atomically.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from teachfit.atomic import write_json_atomic
from teachfit.evaluate.answers import display_name
from teachfit.files import read_table, write_jsonl, write_table


def result_labels(config: Any) -> dict[str, str]:
    """student / teacher of a results row: from a teachfit checkpoint (config.model), else the
    model spec, or the answers file's name (config.answers); --student-name / --teacher-name win."""
    labels = labels_for(config.model) if config.model else {"student": Path(config.answers).stem, "teacher": ""}
    labels.update({k: v for k, v in (("student", config.student_name), ("teacher", config.teacher_name)) if v})
    return labels


def labels_for(model: str) -> dict[str, str]:
    """student and teacher of a checkpoint made by `teachfit train` (from its RunDir.CHECKPOINT_METADATA file)."""
    from teachfit.models import ModelSpec
    from teachfit.run import RunDir

    spec = ModelSpec.parse(model)
    record = Path(spec.name) / RunDir.CHECKPOINT_METADATA if spec.prefix == "hf" else None
    if record is not None and record.exists():
        data = json.loads(record.read_text())
        return {"student": data.get("student") or "", "teacher": data.get("teacher") or ""}
    return {"student": model, "teacher": ""}


def write_results_row(path: Path, row: dict[str, Any]) -> None:
    """Insert or replace this (student, teacher, model, bench) row in results.csv."""
    rows = read_table(path)[0] if path.exists() else []
    key = ("student", "teacher", "model", "bench")
    rows = [r for r in rows if tuple(str(r.get(k)) for k in key) != tuple(str(row.get(k)) for k in key)] + [row]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    write_table(path, [{c: r.get(c, "") for c in columns} for r in rows], {"stage": "evaluate"})


def elapsed(started: float) -> float:
    """Seconds since `started`, rounded."""
    return round(time.perf_counter() - started, 1)


def dump_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write per-prompt rows (judgments, checks) as JSONL, atomically."""
    write_jsonl(path, rows)


def finish(config: Any, out: Path, labels: dict[str, str], results_csv: Path, bench: str, started: float,
           rows: Sequence[dict[str, Any]], scores: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Write <bench>/<name>.jsonl (per prompt), scores-<name>--<bench>.json (summary) and the
    results.csv row; return the summary."""
    from teachfit.versions import versions

    name = display_name(config)
    dump_jsonl(out / bench / f"{name}.jsonl", rows)
    row = {**labels, "model": config.model or str(config.answers), "bench": bench, **scores,
           "seconds": elapsed(started)}
    write_results_row(results_csv, row)
    report = {"results": row, **extra, "answers": config.answers, "max_new_tokens": config.max_new_tokens,
              "seed": config.seed, "bootstrap": config.bootstrap, "versions": versions()}
    write_json_atomic(out / f"scores-{name}--{bench}.json", report)
    return report
