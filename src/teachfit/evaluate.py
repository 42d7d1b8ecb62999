"""Stage `evaluate`: a model's answers judged against a baseline, AlpacaEval-2 and Arena-Hard style.

AE2 style: one judgment per instruction (random order), preference from the judge, WR with
its standard error and LC (Dubois et al. 2024). AH style: every question judged in both orders
on the five-point scale, strong verdicts weigh 3, WR with a 95% bootstrap interval.
AP = (AE2 LC + AH WR) / 2. Every judgment is cached by a hash of (judge, prompt, both answers),
so a re-run pays for nothing twice and an interrupted run resumes.
"""
from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from teachfit import metrics
from teachfit.judging import VERDICT_MEANING, JudgeConfig, parse_verdict, preference_for_first
from teachfit.records import InputError, iter_raw_records
from teachfit.store import ResultCache, content_hash

OFFLINE_BENCH = "offline"


@dataclass
class BenchItem:
    """One benchmark prompt and, when known, the baseline's answer to it."""

    id: str
    instruction: str
    category: str = ""
    baseline: str | None = None


def shipped(path: str) -> Path:
    """A file shipped in teachfit/data."""
    return Path(str(resources.files("teachfit").joinpath(f"data/{path}")))


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
    for number, record in iter_raw_records(name_or_path):
        if isinstance(record, InputError):
            raise record
        text = record.get("instruction") or record.get("prompt") or (record.get("turns") or [{}])[0].get("content")
        if not text:
            raise InputError(name_or_path, number, "missing field: 'instruction' (or 'turns')")
        ident = str(record.get("question_id") or record.get("id") or number)
        items.append(BenchItem(ident, text, str(record.get("category", record.get("dataset", ""))), record.get("output")))
    return items, Path(name_or_path).stem


def _from_hub(name: str) -> list[BenchItem]:
    from teachfit.models import require

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
    for _, record in iter_raw_records(path):
        if isinstance(record, InputError):
            raise record
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


class Judgments:
    """Runs judge requests with caching, bounded concurrency and retries of unparsable answers."""

    def __init__(self, judge: Any, config: JudgeConfig, cache_dir: Path, concurrency: int = 1):
        self.judge, self.config, self.concurrency = judge, config, max(1, concurrency)
        self.cache = ResultCache(cache_dir / content_hash(judge.identity(), config.name, config.prompt)[:16])

    def _one(self, job: tuple[list[dict[str, str]], bool, Any]) -> dict[str, Any]:
        messages, logprobs, parse = job
        key = content_hash(self.judge.identity(), self.config.name, messages, logprobs)
        cached = self.cache.get(key)
        if cached is not None:
            return cached | {"cached": True}
        options = None if logprobs else self.config.verdicts or self.config.choices
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
        """Replies for the jobs, in order."""
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


def write_results_row(path: Path, row: dict[str, Any]) -> None:
    """Insert or replace this (student, teacher, model, bench) row in results.csv."""
    from teachfit.records import read_table, write_table

    rows = read_table(path)[0] if path.exists() else []
    key = ("student", "teacher", "model", "bench")
    rows = [r for r in rows if tuple(str(r.get(k)) for k in key) != tuple(str(row.get(k)) for k in key)] + [row]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    write_table(path, [{c: r.get(c, "") for c in columns} for r in rows], {"stage": "evaluate"})


def dump_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write judgment rows as JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def elapsed(started: float) -> float:
    """Seconds since `started`, rounded."""
    return round(time.perf_counter() - started, 1)


# what the loaders of a model under test (teachfit.models.load("teacher", ...)) take
MODEL_LOAD_KEYS = ("dtype", "device", "trust_remote_code", "n_ctx", "n_threads", "concurrency", "timeout", "max_retries",
                   "batch_size")


def model_load_options(config: Any) -> dict[str, Any]:
    """The load options of the model under test and of a baseline model (an EvaluateConfig's
    load_options and server_options: dtype, device, llama.cpp's n_ctx and n_threads, a server's
    concurrency, timeout and retries). The one place that builds them."""
    options = config.load_options() | config.server_options()
    return {k: v for k, v in options.items() if k in MODEL_LOAD_KEYS}


def result_labels(config: Any) -> dict[str, str]:
    """student / teacher of a results row: from a teachfit checkpoint (config.model), else the
    model spec, or the answers file's name (config.answers); --student-name / --teacher-name win."""
    labels = labels_for(config.model) if config.model else {"student": Path(config.answers).stem, "teacher": ""}
    labels.update({k: v for k, v in (("student", config.student_name), ("teacher", config.teacher_name)) if v})
    return labels


def answers_path(out: Path, name: str, bench: str) -> Path:
    """Where a model's answers to a bench are kept: out/answers/<name>--<bench>.jsonl (one file per
    bench: generating one bench's answers never rewrites another's)."""
    return out / "answers" / f"{name}--{bench}.jsonl"


def answers_from(items: Sequence[BenchItem], spec: str, path: Path, max_new_tokens: int,
                 load_options: dict[str, Any], show_progress: bool) -> dict[str, str]:
    """A model's greedy answers to the prompts (the paper's decoding), generated once into `path`;
    answers stored there by another spec or with another max_new_tokens are made again."""
    from teachfit.generate import TeacherRequest, answer_all, read_done
    from teachfit.instructions import Instruction
    from teachfit.models import load
    from teachfit.models.base import GenerationSettings

    prompts = [Instruction(i.id, i.instruction, f"bench:{i.id}", i.category) for i in items]
    request = TeacherRequest(spec, GenerationSettings(max_new_tokens=max_new_tokens), path.stem)
    stats = answer_all(prompts, request, path, lambda s: load("teacher", s, **load_options), show_progress)
    if stats["errors"]:
        raise RuntimeError(f"{spec}: {stats['errors']} prompts could not be answered (see {path}); re-run to retry")
    return {key[0]: record["response"] for key, record in read_done(path, request).items()}


def labels_for(model: str) -> dict[str, str]:
    """student and teacher of a checkpoint made by `teachfit train` (from its teachfit_train.json)."""
    from teachfit.models import ModelSpec

    spec = ModelSpec.parse(model)
    record = Path(spec.name) / "teachfit_train.json" if spec.prefix == "hf" else None
    if record is not None and record.exists():
        data = json.loads(record.read_text())
        return {"student": data.get("student") or "", "teacher": data.get("teacher") or ""}
    return {"student": model, "teacher": ""}


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
                   results_csv: str | Path | None = None) -> dict[str, Any]:
    """Answer the benchmark with `config.model` (an EvaluateConfig), judge it against the
    baseline, write answers/<model>--<bench>.jsonl, judgments/<model>--<bench>-<judge file>.jsonl
    and scores-<model>--<bench>.json under `out` and one row (student/teacher/model/bench) into
    `results_csv` (default: out/results.csv); return the scores."""
    from teachfit.teachers import short_model_name
    from teachfit.judging import load_judge
    from teachfit.models import ModelSpec
    from teachfit.versions import versions

    out, started = Path(out), time.perf_counter()
    model, load_options = config.model, model_load_options(config)
    items, bench_name = load_bench(config.bench)
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
    judge_model = load_judge(config.judge, config.constraint, **config.server_options())
    parallel = config.concurrency if ModelSpec.parse(config.judge).prefix == "openai" else 1
    ae2, ah = [], []
    cache_dir = out / ".cache" / "judgments"
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
           "n_prompts": len(items), "seconds": elapsed(started)}
    write_results_row(Path(results_csv) if results_csv else out / "results.csv", row)
    report = {"results": row, "timings_seconds": timings, "max_new_tokens": config.max_new_tokens, "seed": config.seed,
              "constraint": config.constraint, "versions": versions()}
    (out / f"scores-{name}--{bench_name}.json").write_text(json.dumps(report, indent=2))
    return report
