"""Judge-free or cheap measures of a model's quality, the truth side of `teachfit correlate`:
`evaluate --bench ifeval` (teachfit.ifeval) and `evaluate --bench rating`, and what both share:
answers from a file or generated once, per-prompt rows, a summary and a row of results.csv.

`--bench rating`: the absolute rating of the model's answers to the shipped offline prompts, by
the same scorer `score` uses for its reward (teachfit.reward.load_reward: an instruct judge's
expected 1-9 rating, or a reward model's scalar), its mean with a 95% bootstrap interval.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from teachfit.records import InputError

JUDGE_FREE = ("ifeval", "rating")


def display_name(config: Any) -> str:
    """The name of the evaluated answers in file names: the model's, else the answers file's."""
    from teachfit.teachers import short_model_name

    return short_model_name(config.model) if config.model else Path(config.answers).stem


def answer_prompts(config: Any, out: Path, items: Sequence[tuple[str, str, str]], every_prompt: Sequence[str],
                   prompts_source: str, bench: str) -> dict[str, str]:
    """{key: answer} for items (key, prompt text, category): from config.answers (matched by prompt
    text against every_prompt), else config.model's greedy answers, generated once into
    out/answers/<name>--<bench>.jsonl (an interrupted run resumes)."""
    from teachfit.evaluate import BenchItem, answers_from, answers_path, model_load_options

    if config.answers:
        from teachfit.ifeval import read_answers

        by_text = read_answers(config.answers, every_prompt, prompts_source)
        missing = [key for key, text, _ in items if text not in by_text]
        if missing:
            raise InputError(config.answers, None, f"no answer for {len(missing)} of the {len(items)} prompts "
                                                   f"(first: key {missing[0]} of {prompts_source})")
        return {key: by_text[text] for key, text, _ in items}
    bench_items = [BenchItem(key, text, category) for key, text, category in items]
    path = answers_path(out, display_name(config), bench)
    return answers_from(bench_items, config.model, path, config.max_new_tokens, model_load_options(config),
                        config.progress)


def finish(config: Any, out: Path, labels: dict[str, str], results_csv: Path, bench: str, started: float,
           rows: Sequence[dict[str, Any]], scores: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Write <bench>/<name>.jsonl (per prompt), scores-<name>--<bench>.json (summary) and the
    results.csv row; return the summary."""
    from teachfit.evaluate import dump_jsonl, elapsed, write_results_row
    from teachfit.versions import versions

    name = display_name(config)
    dump_jsonl(out / bench / f"{name}.jsonl", rows)
    row = {**labels, "model": config.model or str(config.answers), "bench": bench, **scores,
           "seconds": elapsed(started)}
    write_results_row(results_csv, row)
    report = {"results": row, **extra, "answers": config.answers, "max_new_tokens": config.max_new_tokens,
              "seed": config.seed, "bootstrap": config.bootstrap, "versions": versions()}
    (out / f"scores-{name}--{bench}.json").write_text(json.dumps(report, indent=2))
    return report


def rate(config: Any, pairs: Sequence[tuple[str, str]]) -> tuple[list[dict[str, Any]], str]:
    """The reward scorer's value of each (instruction, answer) pair and the scorer's kind."""
    from teachfit.forward import BatchPlan
    from teachfit.records import Pair
    from teachfit.reward import load_reward

    scorer = load_reward(config.judge, "auto", BatchPlan(), 4096, **config.load_options())
    values = scorer.compute([Pair(str(i), text, answer, "") for i, (text, answer) in enumerate(pairs)])
    return values, scorer.kind


def run_rating(config: Any, out: Path, labels: dict[str, str], results_csv: Path) -> dict[str, Any]:
    """The absolute rating (config.judge) of the answers to the shipped offline prompts: the mean
    (1-9 for a generative judge, higher is better) with its 95% bootstrap interval over prompts."""
    from teachfit.evaluate import OFFLINE_BENCH, load_bench
    from teachfit.metrics import bootstrap_ci

    if not config.judge:
        raise ValueError("--bench rating needs --judge: an instruct model (its expected 1-9 rating, as `score "
                         "--reward-kind judge`) or a reward model, as hf:, gguf: or packaged:")
    started = time.perf_counter()
    items, _ = load_bench(OFFLINE_BENCH)
    answers = answer_prompts(config, out, [(i.id, i.instruction, i.category) for i in items],
                             [i.instruction for i in items], "the shipped offline prompts", "rating")
    values, kind = rate(config, [(i.instruction, answers[i.id]) for i in items])
    rows = [{"id": i.id, "instruction": i.instruction, "response": answers[i.id], "rating": v["reward"],
             **{k: x for k, x in v.items() if k != "reward"}} for i, v in zip(items, values)]
    ratings = [r["rating"] for r in rows]
    scores: dict[str, Any] = {"rating_mean": sum(ratings) / len(ratings), "rating_judge": config.judge,
                              "rating_kind": kind, "n_prompts": len(rows)}
    if config.bootstrap:
        scores["rating_lo"], scores["rating_hi"] = bootstrap_ci(ratings, n_resamples=config.bootstrap, seed=config.seed)
    return finish(config, out, labels, results_csv, "rating", started, rows, scores, {"prompts": OFFLINE_BENCH})


def run_truth(config: Any, out: Path, results_csv: Path) -> dict[str, Any]:
    """Dispatch `evaluate --bench ifeval | rating`."""
    from teachfit.evaluate import result_labels
    from teachfit.ifeval import run_ifeval

    if not config.model and not config.answers:
        raise ValueError("give --model (its answers are generated) or --answers FILE (answers made elsewhere)")
    run = run_ifeval if config.bench == "ifeval" else run_rating
    return run(config, out, result_labels(config), results_csv)


def summary_line(row: dict[str, Any]) -> str:
    """The CLI's one line for a results row of --bench ifeval or rating."""
    if row["bench"] == "ifeval":
        from teachfit.ifeval import summary_line as ifeval_line

        return ifeval_line(row)
    interval = f" [{row['rating_lo']:.3f}, {row['rating_hi']:.3f}]" if "rating_lo" in row else ""
    return f"rating ({row['rating_kind']}) of {row['n_prompts']} answers: mean {row['rating_mean']:.3f}{interval}"
