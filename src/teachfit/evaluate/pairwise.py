"""Stage `evaluate`: a model's answers judged against a baseline, AlpacaEval-2 and Arena-Hard style.

AE2 style: one judgment per instruction (random order), preference from the judge, WR with
its standard error and LC (Dubois et al. 2024). AH style: every question judged in both orders
on the five-point scale, strong verdicts weigh 3, WR with a 95% bootstrap interval.
AP = (AE2 LC + AH WR) / 2. Every judgment is cached by a hash of (judge, prompt, both answers),
so a re-run pays for nothing twice and an interrupted run resumes.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from teachfit import metrics
from teachfit.atomic import write_json_atomic
from teachfit.env import free_accelerator_memory
from teachfit.evaluate.answers import answers_from, answers_path, model_load_options
from teachfit.evaluate.bench import BenchItem, attach_baseline, open_bench
from teachfit.evaluate.bench_sets import source_line
from teachfit.evaluate.judging import VERDICT_MEANING, JudgeConfig, parse_verdict, preference_for_first
from teachfit.evaluate.results import dump_jsonl, elapsed, labels_for, write_results_row
from teachfit.records import InputError
from teachfit.store import ResultCache, content_hash


def load_judge(spec: str, constraint: str = "grammar", **options: Any) -> Any:
    """A judge model from its spec through the model registry (role 'judge': teachfit.models.judges)."""
    from teachfit.models import load

    return load("judge", spec, constraint=constraint, **options)


class Judgments:
    """Runs judge requests with caching, bounded concurrency and retries of unparsable answers."""

    def __init__(self, judge: Any, config: JudgeConfig, cache_dir: Path, concurrency: int = 1):
        self.judge, self.config, self.concurrency = judge, config, max(1, concurrency)
        self.cache = ResultCache(cache_dir / content_hash(judge.identity(), config.name, config.prompt)[:16])

    def _key(self, messages: list[dict[str, str]], logprobs: bool) -> str:
        return content_hash(self.judge.identity(), self.config.name, messages, logprobs)

    def _options(self, logprobs: bool) -> Any:
        return None if logprobs else self.config.verdicts or self.config.choices

    def _one(self, job: tuple[list[dict[str, str]], bool, Any]) -> dict[str, Any]:
        messages, logprobs, parse = job
        key = self._key(messages, logprobs)
        cached = self.cache.get(key)
        if cached is not None:
            return cached | {"cached": True}
        options = self._options(logprobs)
        attempts = []
        for attempt in range(self.config.retries + 1):
            temperature = self.config.temperature if attempt == 0 else 0.7
            try:
                reply = self.judge.ask(messages, self.config.max_tokens, temperature, options, logprobs)
            except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError, OSError) as error:
                # a failed request or a garbage reply (not JSON, no choices): unparsable, retried, counted
                reply = {"text": "", "error": f"{type(error).__name__}: {error}"[:500], "seconds": 0.0, "usage": {}}
            reply["parsed"] = parse(reply)
            attempts.append(reply)
            if reply["parsed"] is not None:
                break
        result = attempts[-1] | {"attempts": len(attempts), "unparsable": [a["text"] for a in attempts if a["parsed"] is None]}
        if result["parsed"] is not None:
            self.cache.put_many([(key, result)])
        return result | {"cached": False}

    def run(self, jobs: Sequence[tuple[list[dict[str, str]], bool, Any]]) -> list[dict[str, Any]]:
        """Replies for the jobs, in order. A batch judge (models/batch_judge.py) first gets every
        uncached first attempt at once, as provider batches recorded beside the cache."""
        if hasattr(self.judge, "prefetch"):
            self.judge.prefetch([(m, self.config.max_tokens, self.config.temperature, self._options(lp), lp)
                                 for m, lp, _ in jobs if self.cache.get(self._key(m, lp)) is None],
                                self.cache.folder / "batches.json")
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, jobs))


def judge_alpaca_eval(items: Sequence[BenchItem], answers: dict[str, str], judgments: Judgments,
                      seed: int = 0) -> list[dict[str, Any]]:
    """One AE2-style judgment per prompt; the model is output A or B at random (seeded per prompt)."""
    config, jobs, orders = judgments.config, [], []
    for item in items:
        model_first = random.Random(f"{seed}:{item.id}").random() < 0.5
        a, b = (answers[item.id], item.baseline) if model_first else (item.baseline, answers[item.id])
        orders.append(model_first)
        jobs.append((config.render(item.instruction, a, b), True, lambda r: preference_for_first(r, config.choices)))
    rows = []
    for item, model_first, reply in zip(items, orders, judgments.run(jobs)):
        p_first = reply["parsed"]
        preference = None if p_first is None else (p_first if model_first else 1.0 - p_first)
        rows.append({"id": item.id, "instruction": item.instruction, "model_output": answers[item.id],
                     "baseline_output": item.baseline, "model_position": "A" if model_first else "B",
                     "preference": preference, "judge_text": reply.get("text"), "attempts": reply.get("attempts"),
                     "unparsable": reply.get("unparsable"), "usage": reply.get("usage"), "seconds": reply.get("seconds"),
                     "cached": reply.get("cached")})
    return rows


def judge_arena_hard(items: Sequence[BenchItem], answers: dict[str, str], judgments: Judgments) -> list[dict[str, Any]]:
    """Two AH-style games per prompt: baseline as A then model as A; scores are the model's."""
    config, jobs = judgments.config, []
    for item in items:
        for a, b in ((item.baseline, answers[item.id]), (answers[item.id], item.baseline)):
            jobs.append((config.render(item.instruction, a, b), False,
                         lambda r: parse_verdict(r.get("text", ""), config.verdict_pattern, config.prompt)))
    replies = judgments.run(jobs)
    rows = []
    for index, item in enumerate(items):
        games = []
        for game, model_is_a in ((0, False), (1, True)):
            reply = replies[2 * index + game]
            verdict = reply["parsed"]
            score = weight = None
            if verdict is not None:
                score_a, strong = VERDICT_MEANING[verdict]
                score, weight = (score_a if model_is_a else 1.0 - score_a), (config.strong_weight if strong else 1.0)
            games.append({"model_position": "A" if model_is_a else "B", "verdict": verdict, "score": score,
                          "weight": weight, "judge_text": reply.get("text"), "attempts": reply.get("attempts"),
                          "unparsable": reply.get("unparsable"), "usage": reply.get("usage"),
                          "seconds": reply.get("seconds"), "cached": reply.get("cached")})
        rows.append({"id": item.id, "instruction": item.instruction, "model_output": answers[item.id],
                     "baseline_output": item.baseline, "games": games})
    return rows


def summarize(ae2: Sequence[dict[str, Any]], ah: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """WR, LC, AH WR with interval, AP, counts of unparsable judgments and judge usage."""
    out: dict[str, Any] = {}
    judged = [r for r in ae2 if r["preference"] is not None]
    if judged:
        out["ae2_wr"], out["ae2_wr_se"] = metrics.win_rate([r["preference"] for r in judged])
        out["ae2_lc"], out["lc_formula"] = metrics.length_controlled_win_rate(
            [r["preference"] for r in judged], [len(r["model_output"]) for r in judged],
            [len(r["baseline_output"]) for r in judged])
    out["n_ae2"], out["unparsable_ae2"] = len(judged), len(ae2) - len(judged)
    complete = [r for r in ah if all(g["score"] is not None for g in r["games"])]
    if complete:
        out["ah_wr"], out["ah_ci_low"], out["ah_ci_high"] = metrics.arena_hard_win_rate(
            [[g["score"] for g in r["games"]] for r in complete], [[g["weight"] for g in r["games"]] for r in complete])
    out["n_ah"], out["unparsable_ah"] = len(complete), len(ah) - len(complete)
    if "ae2_lc" in out and "ah_wr" in out:
        out["ap"] = metrics.average_performance(out["ae2_lc"], out["ah_wr"])
    replies = [r for r in ae2] + [g for r in ah for g in r["games"]]
    out["judge_prompt_tokens"] = sum((r.get("usage") or {}).get("prompt_tokens", 0) for r in replies)
    out["judge_completion_tokens"] = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in replies)
    out["judge_seconds"] = round(sum(r.get("seconds") or 0 for r in replies if not r.get("cached")), 2)
    return out


def judge_files(config: Any) -> list[str]:
    """The judge configs to run: the user's own files (each one's `style` says AE2 `preference` or
    AH `verdict`), else the shipped alpaca_eval / arena_hard for config.style; checked up front."""
    names = list(config.judge_config) or [name for style, name in (("ae2", "alpaca_eval"), ("ah", "arena_hard"))
                                          if config.style in (style, "both")]
    for name in names:
        style = JudgeConfig.load(name).style
        if style not in ("preference", "verdict"):
            raise InputError(name, None, f"style must be preference (AE2) or verdict (AH), got {style!r}")
    return names


def run_evaluation(config: Any, out: str | Path, labels: dict[str, str] | None = None,
                   results_csv: str | Path | None = None, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Answer the benchmark with `config.model` (an EvaluateConfig), judge it against the
    baseline, write answers/<model>--<bench>.jsonl, judgments/<model>--<bench>-<judge file>.jsonl
    and scores-<model>--<bench>.json under `out` and one row (student/teacher/model/bench) into
    `results_csv` (default: out/results.csv); return the scores. Judgments are cached in
    `cache_dir`: a run's RunDir.cache("judgments"), else out/.cache/judgments."""
    from teachfit.models import ModelSpec
    from teachfit.teachers import short_model_name
    from teachfit.versions import versions

    out, started = Path(out), time.perf_counter()
    model, load_options = config.model, model_load_options(config)
    bench = open_bench(config.bench)
    items, bench_name = bench.items, bench.name
    name = short_model_name(model)
    if config.baseline and Path(config.baseline).exists():
        attach_baseline(items, config.baseline)
    elif config.baseline:
        ModelSpec.parse(config.baseline)
        path = answers_path(out, f"baseline-{short_model_name(config.baseline)}", bench_name)
        found = answers_from(items, config.baseline, path, config.max_new_tokens, load_options, config.progress)
        for item in items:
            item.baseline = found[item.id]
    if any(not i.baseline for i in items):
        raise InputError(config.bench, None, "no baseline answers: pass --baseline FILE or --baseline MODEL")
    answers = answers_from(items, model, answers_path(out, name, bench_name), config.max_new_tokens, load_options,
                           config.progress)
    timings = {"answer": elapsed(started)}
    free_accelerator_memory()  # the model under test is dropped before the judge loads
    judge_model = load_judge(config.judge, config.constraint, **config.server_options())
    parallel = config.concurrency if ModelSpec.parse(config.judge).prefix in ("openai", "openai-batch") else 1
    ae2, ah = [], []
    cache_dir = Path(cache_dir) if cache_dir else out / ".cache" / "judgments"
    judged = time.perf_counter()
    for judge_file in judge_files(config):
        judge_config = JudgeConfig.load(judge_file)
        judgments = Judgments(judge_model, judge_config, cache_dir, parallel)
        if judge_config.style == "preference":  # AlpacaEval-2 style
            ae2 = judge_alpaca_eval(items, answers, judgments, config.seed)
            dump_jsonl(out / "judgments" / f"{name}--{bench_name}-{Path(judge_file).stem}.jsonl", ae2)
        else:  # "verdict": Arena-Hard style
            ah = judge_arena_hard(items, answers, judgments)
            dump_jsonl(out / "judgments" / f"{name}--{bench_name}-{Path(judge_file).stem}.jsonl", ah)
    timings["judge"] = elapsed(judged)
    scores = summarize(ae2, ah)
    row = {**(labels or labels_for(model)), "model": model, "bench": bench_name, "judge": config.judge, **scores,
           "n_prompts": len(items), "bench_source": source_line(bench.source), "seconds": elapsed(started)}
    write_results_row(Path(results_csv) if results_csv else out / "results.csv", row)
    report = {"results": row, "timings_seconds": timings, "max_new_tokens": config.max_new_tokens, "seed": config.seed,
              "constraint": config.constraint, "bench_source": bench.source,
              "versions": versions()}
    write_json_atomic(out / f"scores-{name}--{bench_name}.json", report)
    return report
