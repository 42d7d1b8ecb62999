"""The answers being evaluated: a model's greedy answers to a bench's prompts (the paper's
decoding), generated once into evaluations/answers/<name>--<bench>.jsonl (an interrupted run
resumes; another spec or max_new_tokens makes them again), or answers made elsewhere, read from a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from teachfit.evaluate.bench import BenchItem
from teachfit.files import read_records
from teachfit.records import InputError


# what the loaders of a model under test (teachfit.models.load("teacher", ...)) take
MODEL_LOAD_KEYS = ("dtype", "device", "trust_remote_code", "n_ctx", "n_threads", "concurrency", "timeout", "max_retries",
                   "batch_size")


def model_load_options(config: Any) -> dict[str, Any]:
    """The load options of the model under test and of a baseline model (an EvaluateConfig's
    load_options and server_options: dtype, device, llama.cpp's n_ctx and n_threads, a server's
    concurrency, timeout and retries). The one place that builds them."""
    options = config.load_options() | config.server_options()
    return {k: v for k, v in options.items() if k in MODEL_LOAD_KEYS}


def display_name(config: Any) -> str:
    """The name of the evaluated answers in file names: the model's, else the answers file's."""
    from teachfit.teachers import short_model_name

    return short_model_name(config.model) if config.model else Path(config.answers).stem


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


def answer_prompts(config: Any, out: Path, items: Sequence[tuple[str, str, str]], every_prompt: Sequence[str],
                   prompts_source: str, bench: str) -> dict[str, str]:
    """{key: answer} for items (key, prompt text, category): from config.answers (matched by prompt
    text against every_prompt), else config.model's greedy answers, generated once into
    out/answers/<name>--<bench>.jsonl (an interrupted run resumes)."""
    if config.answers:
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


def read_answers(path: str, prompts: Sequence[str], prompts_source: str) -> dict[str, str]:
    """Answers made elsewhere, by prompt text, from JSONL records with `prompt` and `response`
    (IFEval's input_response_data layout); every problem is an InputError at file:line."""
    known, answers, lines = set(prompts), {}, {}
    for number, record in read_records(path):
        for name in ("prompt", "response"):
            if name not in record:
                raise InputError(path, number, f"missing field: '{name}'")
            if not isinstance(record[name], str):
                raise InputError(path, number, f"'{name}' must be a string, got {type(record[name]).__name__}")
        text = record["prompt"]
        if text not in known:
            raise InputError(path, number, f"prompt not in {prompts_source}: {text[:60]!r}")
        if text in lines:
            raise InputError(path, number, f"duplicate prompt (first on line {lines[text]})")
        answers[text], lines[text] = record["response"], number
    return answers
