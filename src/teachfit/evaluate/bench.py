"""Benchmarks of the pairwise evaluation: prompts and, when known, the baseline's answers.

'offline' ships with teachfit (40 prompts with baseline answers); 'alpaca_eval' and 'arena_hard'
come from the dataset hub when it is reachable; any file in AlpacaEval's, Arena-Hard's or
teachfit's own layout works too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from teachfit.env import require, shipped
from teachfit.files import read_records
from teachfit.records import InputError

OFFLINE_BENCH = "offline"


@dataclass
class BenchItem:
    """One benchmark prompt and, when known, the baseline's answer to it."""

    id: str
    instruction: str
    category: str = ""
    baseline: str | None = None


def load_bench(name_or_path: str) -> tuple[list[BenchItem], str]:
    """Benchmark prompts: 'offline' (shipped, 40 prompts with baseline answers), 'alpaca_eval' or
    'arena_hard' (from the dataset hub, when reachable), or a file: AlpacaEval's JSON
    (instruction, output, generator), Arena-Hard's question.jsonl, or teachfit instructions."""
    if name_or_path == OFFLINE_BENCH:
        items, _ = load_bench(str(shipped("bench/offline_prompts.jsonl")))
        attach_baseline(items, str(shipped("bench/offline_baseline.jsonl")))
        return items, OFFLINE_BENCH
    if name_or_path in ("alpaca_eval", "arena_hard"):
        return _from_hub(name_or_path), name_or_path
    items = []
    for number, record in read_records(name_or_path):
        text = record.get("instruction") or record.get("prompt") or (record.get("turns") or [{}])[0].get("content")
        if not text:
            raise InputError(name_or_path, number, "missing field: 'instruction' (or 'turns')")
        ident = str(record.get("question_id") or record.get("id") or number)
        items.append(BenchItem(ident, text, str(record.get("category", record.get("dataset", ""))), record.get("output")))
    return items, Path(name_or_path).stem


def _from_hub(name: str) -> list[BenchItem]:
    datasets = require("datasets", "train")
    try:
        if name == "alpaca_eval":
            rows = datasets.load_dataset("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline", split="eval")
            return [BenchItem(str(i), r["instruction"], r.get("dataset", ""), r["output"]) for i, r in enumerate(rows)]
        rows = datasets.load_dataset("lmarena-ai/arena-hard-auto-v0.1", split="train")
        return [BenchItem(str(r["question_id"]), r["turns"][0]["content"], r.get("category", "")) for r in rows]
    except Exception as error:  # offline or moved: say what to do instead
        raise InputError(name, None, f"could not load from the dataset hub ({type(error).__name__}); download it "
                                     "and pass the file, or use --bench offline") from None


def attach_baseline(items: Sequence[BenchItem], path: str) -> None:
    """Set each item's baseline answer from a file: AlpacaEval outputs (instruction, output),
    Arena-Hard model answers (question_id, choices[0].turns[0].content) or teachfit responses."""
    by_id, by_text = {}, {}
    for _, record in read_records(path):
        answer = record.get("output") or record.get("response")
        if answer is None and record.get("choices"):
            answer = record["choices"][0]["turns"][0]["content"]
        key = record.get("question_id") or record.get("instruction_id") or record.get("id")
        if key is not None:
            by_id[str(key)] = answer
        if record.get("instruction"):
            by_text[record["instruction"]] = answer
    for item in items:
        item.baseline = by_id.get(item.id, by_text.get(item.instruction, item.baseline))
    missing = [i.id for i in items if not i.baseline]
    if missing:
        raise InputError(path, None, f"no baseline answer for {len(missing)} prompts (first: {missing[0]})")
