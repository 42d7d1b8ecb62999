"""The experiment file: one YAML file describes a whole study, one section per stage.

    run_dir: runs/study            # default: a folder named after the file, beside it
    executor: local                # or {type: ray, address: auto, num_workers: 4, num_gpus_per_worker: 1}
    responses: [given.jsonl]       # datasets made elsewhere, used as they are (optional)
    generate: {instructions: [...], teacher: [...], max_new_tokens: 512}
    score:    {student: [...], reward_model: ..., reference: ...}
    select:   [{by: car-instance}, {by: reward, teacher: X-t0.8-p0.95-n5, name: X-best5}]
    rank:     {beta: 3}
    train:    {...}
    evaluate: [{judge: ...}, {bench: ifeval, ifeval_prompts: input_data.jsonl}]   # one or a list
    correlate: {}   report: {paper: true}

The keys of a section are exactly the option names of that stage's command (teachfit.config).
Everything is checked before any model loads: a wrong key, type or value is an error naming the
file, the line and the key (and the nearest valid key). Paths are relative to the file;
`teachfit:<path>` names a file shipped inside the package (the demo's data).
"""
from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from teachfit.config import SCORE_METRICS, STAGE_CONFIGS, ConfigValueError, check_choices, check_positive, option
from teachfit.records import InputError

# Keys the run directory supplies: an experiment may not set them.
RUN_OWNED = {"score": {"inputs", "out"}, "rank": {"scores"}, "select": {"inputs", "out"},
             "train": {"data", "out", "student"}, "evaluate": {"model", "answers", "out", "student_name", "teacher_name"},
             "correlate": {"run_dir", "metrics", "truth", "out"}, "report": {"run_dir", "out"}}
PATH_KEYS = {"generate": {"instructions"}, "evaluate": {"bench", "baseline", "judge_config", "ifeval_prompts"}}
BENCH_NAMES = ("offline", "alpaca_eval", "arena_hard", "ifeval", "rating")  # not paths
TEACHER_KEYS = ("spec", "temperature", "top_p", "max_new_tokens", "seed", "n", "name")
STAGE_ORDER = ("generate", "score", "select", "rank", "train", "evaluate", "correlate", "report")
LISTED = ("select", "evaluate")  # stages whose section may be a list: each item runs (several selections, benches)


@dataclass(kw_only=True)
class ExecutorConfig:
    """Where generation and scoring run: `local` (this process) or `ray` (sharded over workers)."""

    type: str = option("local", "local | ray.", choices=("local", "ray"))
    address: Optional[str] = option(None, "Ray cluster address ('auto' joins a running cluster; none starts one).")
    num_workers: int = option(2, "Ray workers; each loads its model once and takes one shard.")
    num_gpus_per_worker: float = option(0.0, "GPUs per Ray worker (1 for one model replica per GPU).")
    num_cpus_per_worker: float = option(1.0, "CPUs per Ray worker.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "num_workers", "num_cpus_per_worker")


@dataclass
class Experiment:
    """A parsed, checked experiment: the run directory, the executor and one config per stage."""

    path: Path
    run_dir: Path
    executor: ExecutorConfig
    responses: list[str] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)  # name -> config (select: a list of configs)
    raw: dict[str, Any] = field(default_factory=dict)


def key_lines(node: Any, prefix: tuple = ()) -> dict[tuple, int]:
    """Line number (from 1) of every key and list item of a composed YAML node, by path."""
    import yaml

    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines[path] = key.start_mark.line + 1
            lines.update(key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            lines.update(key_lines(item, prefix + (index,)))
    return lines


class _Checker:
    """Checks values against a config class's fields, raising InputError at the key's line."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def fail(self, where: tuple, message: str) -> None:
        line = next((self.lines[where[:n]] for n in range(len(where), 0, -1) if where[:n] in self.lines), None)
        raise InputError(self.path, line, message)

    def section(self, cls: type, data: Any, where: tuple, forbidden: set[str] = frozenset()) -> Any:
        """An instance of `cls` from a mapping, every key and value checked."""
        label = ".".join(map(str, where))
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(where, f"'{label}' must be a mapping of options, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        known = [f.name for f in fields(cls)]
        values = {}
        for key, value in data.items():
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                self.fail(where + (key,), f"unknown key '{key}'" + (f" in '{label}'" if label else "")
                          + (f" (did you mean '{near[0]}'?)" if near else f"; known: {', '.join(known)}"))
            if key in forbidden:
                why = " (its checkpoints are the models evaluated)" if key in ("model", "answers") else ""
                self.fail(where + (key,), f"'{label}.{key}' is set by the run directory{why}; remove it")
            values[key] = self.value(value, hints[key], where + (key,))
        try:
            return cls(**values)
        except ConfigValueError as error:
            self.fail(where + (error.key,), f"'{label}.{error.key}': {error.message}")
        except (TypeError, ValueError) as error:
            self.fail(where, f"'{label}': {error}")

    def value(self, value: Any, hint: Any, where: tuple) -> Any:
        """`value` checked against a type hint (str, int, float, bool, Optional[...], List[str])."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        label = ".".join(map(str, where))
        if origin is typing.Union:
            inner = [a for a in args if a is not type(None)][0]
            return None if value is None else self.value(value, inner, where)
        if origin in (list, typing.List):
            items = value if isinstance(value, list) else [value]
            return [self.value(item, args[0], where + (i,)) for i, item in enumerate(items)]
        ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)}[hint]
        if not ok(value):
            self.fail(where, f"'{label}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
        return hint(value)


def resolve_path(text: str, base: Path) -> str:
    """A path from an experiment file: `teachfit:<path>` inside the package, else relative to `base`."""
    from teachfit.models import PREFIXES

    if text.startswith("teachfit:"):
        return str(resources.files("teachfit").joinpath(text.removeprefix("teachfit:")))
    if text.partition(":")[0] in PREFIXES:  # a model spec (a baseline model), not a path
        return text
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else base / path)


def _teacher_text(item: Any, checker: _Checker, where: tuple) -> str:
    """A teacher entry: a spec string, or a mapping {spec, temperature, ...} -> `SPEC?k=v&...`."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict) or "spec" not in item:
        checker.fail(where, "a teacher is a spec string or a mapping with 'spec' and settings")
    from teachfit.models import SPEC_OPTIONS

    engine_keys = tuple(SPEC_OPTIONS.get(str(item["spec"]).partition(":")[0], {}))  # vllm: engine, openai: key_env
    for key in item:
        if key not in TEACHER_KEYS and key not in engine_keys:
            near = difflib.get_close_matches(str(key), TEACHER_KEYS + engine_keys, n=1)
            checker.fail(where + (key,), f"unknown teacher setting '{key}'" + (f" (did you mean '{near[0]}'?)" if near else "")
                         + (f"; spec options: {', '.join(engine_keys)}" if engine_keys else ""))
    value = {True: "true", False: "false"}
    settings = "&".join(f"{k}={value.get(item[k], item[k]) if isinstance(item[k], bool) else item[k]}"
                        for k in TEACHER_KEYS[1:] + engine_keys if k in item)
    return f"{item['spec']}?{settings}" if settings else str(item["spec"])


def _check_models(experiment: Experiment, checker: _Checker) -> None:
    """Parse every model spec and teacher spec now, so that a typo fails before any model loads."""
    from teachfit.generate import parse_teacher
    from teachfit.models import ModelSpec
    from teachfit.models.base import GenerationSettings
    from teachfit.run import safe_name

    stages = experiment.stages
    if "generate" in stages:
        for index, text in enumerate(stages["generate"].teacher):
            try:
                safe_name(parse_teacher(text, GenerationSettings()).name, "dataset name")
            except ValueError as error:
                checker.fail(("generate", "teacher", index), str(error))
    checks = [("score", "student"), ("score", "reference"), ("score", "reward_model")]
    for stage, key in checks:
        value = getattr(stages.get(stage), key, None)
        for index, spec in enumerate(value if isinstance(value, list) else [value] if value else []):
            try:
                ModelSpec.parse(spec)
            except ValueError as error:
                checker.fail((stage, key, index) if isinstance(value, list) else (stage, key), str(error))
    required = [("generate", "teacher"), ("generate", "instructions"), ("score", "student")]
    for stage, key in required:
        if stage in stages and not getattr(stages[stage], key):
            checker.fail((stage,), f"'{stage}' needs '{key}'")
    for where, evaluate in _sections(experiment, "evaluate"):
        if evaluate.judge:
            try:
                ModelSpec.parse(evaluate.judge)
            except ValueError as error:
                checker.fail(where + ("judge",), str(error))
        elif evaluate.bench != "ifeval":  # IFEval is judge-free; the rating and pairwise benches need one
            checker.fail(where, f"'evaluate' needs 'judge' for bench '{evaluate.bench}'")
    benches: dict[str, tuple] = {}
    for where, evaluate in _sections(experiment, "evaluate"):  # results.csv keeps one row per (model, bench)
        name = bench_name(evaluate.bench)
        if name in benches:
            first = checker.lines.get(benches[name] + ("bench",), checker.lines.get(benches[name]))
            checker.fail(where + ("bench",) if where + ("bench",) in checker.lines else where,
                         f"a second evaluate item for bench '{name}' (first at line {first}); one item per bench")
        benches[name] = where
    if ("train" in stages or "evaluate" in stages) and "score" not in stages:
        checker.fail(("train",) if "train" in stages else ("evaluate",), "train and evaluate need a 'score' section (its students)")


def bench_name(bench: str) -> str:
    """The name a bench goes by in results.csv and file names: its own, or a file's stem."""
    return bench if bench in BENCH_NAMES else Path(bench).stem


def _resolve_paths(stage: str, section: Any, base: Path) -> Any:
    """A section (or one item of a listed section) with its path keys made relative to the file."""
    if not isinstance(section, dict):
        return section
    return {k: ([resolve_path(p, base) for p in v] if isinstance(v, list) else resolve_path(v, base))
            if k in PATH_KEYS.get(stage, ()) and v is not None and v not in BENCH_NAMES else v
            for k, v in section.items()}


def _sections(experiment: Experiment, stage: str) -> list[tuple[tuple, Any]]:
    """(where in the file, config) of each section of a stage that may be a list (select, evaluate)."""
    configs = experiment.stages.get(stage)
    if configs is None:
        return []
    listed = isinstance(experiment.raw.get(stage), list)
    return [((stage, i) if listed else (stage,), config) for i, config in enumerate(configs)]


def _default_metrics(experiment: Experiment) -> None:
    """Without `score.metrics`, compute what the later stages use: correlate and report compare every
    column; rank recommends by CAR and select needs no loss(y), so without them the IFD pass is skipped."""
    score = experiment.stages.get("score")
    if score is None or "metrics" in (experiment.raw.get("score") or {}):
        return
    if not {"correlate", "report"} & set(experiment.stages):
        score.metrics = [name for name in SCORE_METRICS if not name.startswith("ifd_")
                         and (score.reference or not name.endswith("_ref"))]


def load_experiment(path: str | Path, run_dir: str | Path | None = None) -> Experiment:
    """Read and check an experiment file; InputError (file:line: reason) on anything wrong."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, None, "not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InputError(path, mark.line + 1 if mark else None, f"not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise InputError(path, 1, "an experiment file is a mapping of sections (generate, score, rank, ...)")
    checker, base = _Checker(path, key_lines(node)), path.parent
    top = ("run_dir", "executor", "responses") + STAGE_ORDER
    for key in data:
        if key not in top:
            near = difflib.get_close_matches(str(key), top, n=1)
            checker.fail((key,), f"unknown section '{key}'" + (f" (did you mean '{near[0]}'?)" if near else f"; known: {', '.join(top)}"))
    executor = data.get("executor") or "local"
    executor = checker.section(ExecutorConfig, {"type": executor} if isinstance(executor, str) else executor, ("executor",))
    root = Path(run_dir) if run_dir else Path(resolve_path(str(data["run_dir"]), base)) if data.get("run_dir") else base / path.stem
    responses = checker.value(data.get("responses") or [], typing.List[str], ("responses",))
    experiment = Experiment(path=path, run_dir=root, executor=executor, raw=data,
                            responses=[resolve_path(p, base) for p in responses])
    for stage in STAGE_ORDER:
        if stage not in data:
            continue
        section = data[stage]
        if stage == "generate" and isinstance(section, dict):
            section = dict(section)
            teachers = section.get("teacher") or []
            section["teacher"] = [_teacher_text(t, checker, ("generate", "teacher", i))
                                  for i, t in enumerate(teachers if isinstance(teachers, list) else [teachers])]
        section = [_resolve_paths(stage, item, base) for item in section] if isinstance(section, list) \
            else _resolve_paths(stage, section, base)
        cls, forbidden = STAGE_CONFIGS[stage], RUN_OWNED.get(stage, set())
        if stage in LISTED:
            items = section if isinstance(section, list) else [section]
            experiment.stages[stage] = [checker.section(cls, item, (stage, i) if isinstance(section, list) else (stage,), forbidden)
                                        for i, item in enumerate(items)]
        else:
            experiment.stages[stage] = checker.section(cls, section, (stage,), forbidden)
    _default_metrics(experiment)
    if "generate" not in experiment.stages and not experiment.responses and "score" in experiment.stages:
        checker.fail(("score",), "nothing to score: add a 'generate' section or 'responses' files")
    _check_models(experiment, checker)
    return experiment
