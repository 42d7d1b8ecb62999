"""`evaluate --bench rating`: the absolute rating of the model's answers to the shipped offline
prompts, by the same scorer `score` uses for its reward (teachfit.score.reward.load_reward: an
instruct judge's expected 1-9 rating, higher is better, or a reward model's scalar on its own
scale), its mean with a 95% bootstrap interval over prompts.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from teachfit.evaluate.answers import answer_prompts
from teachfit.evaluate.bench import OFFLINE_BENCH, load_bench
from teachfit.evaluate.results import finish


def rate(config: Any, pairs: Sequence[tuple[str, str]]) -> tuple[list[dict[str, Any]], str]:
    """The reward scorer's value of each (instruction, answer) pair and the scorer's kind."""
    from teachfit.forward import BatchPlan
    from teachfit.records import Pair
    from teachfit.score.reward import load_reward

    scorer = load_reward(config.judge, "auto", BatchPlan(), 4096, **config.load_options())
    values = scorer.compute([Pair(str(i), text, answer, "") for i, (text, answer) in enumerate(pairs)])
    return values, scorer.kind


def run_rating(config: Any, out: Path, labels: dict[str, str], results_csv: Path) -> dict[str, Any]:
    """The absolute rating (config.judge) of the answers to the shipped offline prompts: the mean
    (1-9 for a generative judge, higher is better) with its 95% bootstrap interval over prompts."""
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


def summary_line(row: dict[str, Any]) -> str:
    """The CLI's one line for a results row of --bench rating."""
    interval = f" [{row['rating_lo']:.3f}, {row['rating_hi']:.3f}]" if "rating_lo" in row else ""
    return f"rating ({row['rating_kind']}) of {row['n_prompts']} answers: mean {row['rating_mean']:.3f}{interval}"
