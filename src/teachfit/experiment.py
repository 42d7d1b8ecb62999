"""The study file: one YAML file describes a whole study, one section per stage.

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

The keys of a section are exactly the option names of that stage's command (its config class,
declared by its Stage record). Everything is checked before any model loads: a wrong key, type or
value, or two entries that would write one file, is an error naming the file, the line and the key
(and the nearest valid key). Paths, and local models' paths (`hf:./models/student`), are relative
to the file; `teachfit:<path>` names a file shipped inside the package (the demo's data).
"""
from __future__ import annotations

import difflib
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from teachfit.config import ConfigValueError, ExecutorConfig
from teachfit.hub_datasets import absolute, is_hub_spec
from teachfit.records import InputError
from teachfit.stage import Plan, Stage
from teachfit.yaml_file import line_of, read_yaml


@dataclass
class Experiment:
    """A parsed, checked study: the run directory, the executor, one config per stage, the plan."""

    path: Path
    run_dir: Path
    executor: ExecutorConfig
    plan: Plan
    responses: list[str] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)  # name -> config (listed stages: a list of configs)
    raw: dict[str, Any] = field(default_factory=dict)


class SectionReader:
    """Checks a mapping against a config class's fields, raising InputError at the key's line."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def fail(self, where: tuple, message: str) -> typing.NoReturn:
        raise InputError(self.path, line_of(self.lines, where), message)

    def section(self, cls: type, data: Any, where: tuple, in_study: bool = False) -> Any:
        """An instance of `cls` from a mapping, every key and value checked; in a study, the keys
        the run directory supplies are refused and paths resolve against the file."""
        label = ".".join(map(str, where))
        data = {} if data is None else data
        if not isinstance(data, dict):
            self.fail(where, f"'{label}' must be a mapping of options, got {type(data).__name__}")
        hints, known = typing.get_type_hints(cls), {f.name: f for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                near = difflib.get_close_matches(str(key), list(known), n=1)
                self.fail(where + (key,), f"unknown key '{key}'" + (f" in '{label}'" if label else "")
                          + (f" (did you mean '{near[0]}'?)" if near else f"; known: {', '.join(known)}"))
            meta = known[key].metadata
            if in_study and meta.get("run_owned"):
                why = " (its checkpoints are the models evaluated)" if key in ("model", "answers") else ""
                self.fail(where + (key,), f"'{label}.{key}' is set by the run directory{why}; remove it")
            value = self.value(value, hints[key], where + (key,))
            values[key] = resolve_option(value, meta, self.path.parent) if in_study else value
        try:
            return cls(**values)
        except ConfigValueError as error:
            self.fail(where + (error.key,), f"'{label}.{error.key}': {error.message}")
        except (TypeError, ValueError) as error:
            self.fail(where, f"'{label}': {error}")

    def value(self, value: Any, hint: Any, where: tuple) -> Any:
        """`value` checked against a type hint (str, int, float, bool, Optional[...], List[str]).
        A float option takes numbers as people write them: `2e-5` (a string to YAML 1.1) too."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        label = ".".join(map(str, where))
        if origin is typing.Union:
            inner = [a for a in args if a is not type(None)][0]
            return None if value is None else self.value(value, inner, where)
        if origin in (list, typing.List):
            items = value if isinstance(value, list) else [value]
            return [self.value(item, args[0], where + (i,)) for i, item in enumerate(items)]
        if hint is float and isinstance(value, str):
            value = _number(value)
        ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)}[hint]
        if not ok(value):
            self.fail(where, f"'{label}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
        return hint(value)


def _number(text: str) -> Any:
    """A float from text such as `2e-5`, `1.5E3`, `.5`; the text itself when it is not a finite number."""
    try:
        number = float(text.strip())
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def resolve_path(text: str, base: Path) -> str:
    """A file named in a study: `teachfit:<path>` inside the package, else relative to `base`."""
    from teachfit.env import SHIPPED_PREFIX, package_file

    if text.startswith(SHIPPED_PREFIX):
        return str(package_file(text))
    if is_hub_spec(text):  # hf-dataset:<local path>[:split] relative to the study; a hub id as it is
        return absolute(text, base)
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else base / path)


def resolve_model(text: str, base: Path) -> str:
    """A model spec named in a study, with a local model's path made relative to `base`:
    `hf:./models/student`, `gguf:weights/m.gguf`, or `hf:folder` when that folder exists there.
    Hub ids, packaged names and served models are left as they are."""
    prefix, _, rest = text.partition(":")
    if prefix not in ("hf", "gguf") or not rest:
        return text
    body, query = (rest.split("?", 1) + [""])[:2]
    local = body.startswith(("./", "../", "~", "/")) or prefix == "gguf" or (base / body).exists()
    if not local:
        return text
    expanded = Path(body).expanduser()
    resolved = expanded if expanded.is_absolute() else base / expanded
    return f"{prefix}:{resolved}" + (f"?{query}" if query else "")


def resolve_option(value: Any, meta: Any, base: Path) -> Any:
    """A study-file value of an option that names files or models, resolved against `base`."""
    from teachfit.models import PREFIXES

    if value is None or not (meta.get("path") or meta.get("model")):
        return value
    if isinstance(value, list):
        return [resolve_option(item, meta, base) for item in value]
    if meta.get("model") and str(value).partition(":")[0] in PREFIXES:
        return resolve_model(str(value), base)
    if meta.get("path") and str(value) not in (meta.get("names") or ()):
        return resolve_path(str(value), base)
    return value


def load_experiment(path: str | Path, run_dir: str | Path | None = None) -> Experiment:
    """Read and check a study file; InputError (file:line: reason) on anything wrong."""
    from teachfit.stages import STAGES

    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(path, 1, "a study file is a mapping of sections (generate, score, rank, ...)")
    reader, base = SectionReader(path, lines), path.parent
    top = ("run_dir", "executor", "responses") + tuple(s.name for s in STAGES)
    for key in data:
        if key not in top:
            near = difflib.get_close_matches(str(key), top, n=1)
            reader.fail((key,), f"unknown section '{key}'" + (f" (did you mean '{near[0]}'?)" if near else f"; known: {', '.join(top)}"))
    executor = data.get("executor") or "local"
    executor = reader.section(ExecutorConfig, {"type": executor} if isinstance(executor, str) else executor, ("executor",))
    if "run_dir" in data and not isinstance(data["run_dir"], str):
        reader.fail(("run_dir",), f"'run_dir' must be a folder name (a string), got {type(data['run_dir']).__name__}")
    root = Path(run_dir) if run_dir else Path(resolve_path(data["run_dir"], base)) if data.get("run_dir") else base / path.stem
    responses = [resolve_path(p, base) for p in reader.value(data.get("responses") or [], typing.List[str], ("responses",))]
    for index, source in enumerate(responses):
        if is_hub_spec(source):  # a study's dataset is one teacher's file, copied into the run
            reader.fail(("responses", index), "a study's responses are files (one teacher each, copied into the run): "
                                              f"score {source} with `teachfit score`, or save it as JSONL first")
    plan = Plan(source=path, lines=lines, raw=data)
    experiment = Experiment(path=path, run_dir=root, executor=executor, plan=plan, raw=data, responses=responses)
    for stage in STAGES:
        if stage.name in data:
            experiment.stages[stage.name] = read_stage_section(stage, data[stage.name], reader)
    plan.sections = experiment.stages
    for index, source in enumerate(responses):
        plan.add("dataset", Path(source).stem, ("responses", index), f"responses file '{source}'")
        plan.given[Path(source).stem] = Path(source)
    for stage in STAGES:
        if stage.name in experiment.stages and stage.plan is not None:
            stage.plan(experiment.stages[stage.name], plan)
    if executor.type == "ray":
        check_gpus_per_worker(experiment, reader)
    return experiment


def check_gpus_per_worker(experiment: Experiment, reader: SectionReader) -> None:
    """A vLLM model split over N GPUs (tensor x pipeline parallel) needs N GPUs in each Ray worker:
    refused at its line otherwise (vLLM would wait for GPUs its worker can never get)."""
    from urllib.parse import parse_qsl

    have = experiment.executor.num_gpus_per_worker
    specs = [(("generate", "teacher", i), s) for i, s in enumerate(getattr(experiment.stages.get("generate"), "teacher", []))]
    score = experiment.stages.get("score")
    specs += [(("score", "student", i), s) for i, s in enumerate(getattr(score, "student", []))]
    specs += [(("score", key), getattr(score, key)) for key in ("reference", "reward_model") if getattr(score, key, None)]
    for where, spec in specs:
        if not spec.startswith("vllm:") or "?" not in spec:
            continue
        options = dict(parse_qsl(spec.split("?", 1)[1]))
        need = int(options.get("tensor_parallel_size", 1)) * int(options.get("pipeline_parallel_size", 1))
        if need > have:
            reader.fail(where, f"{spec} needs {need} GPUs (tensor x pipeline parallel) but each Ray worker has "
                               f"{have:g} (executor.num_gpus_per_worker): give each worker {need}")


def read_stage_section(stage: Stage, section: Any, reader: SectionReader) -> Any:
    """The config (a list of configs for a listed stage) of one section of a study file."""
    if stage.listed:
        items = section if isinstance(section, list) else [section]
        return [reader.section(stage.config, item, (stage.name, i) if isinstance(section, list) else (stage.name,),
                               in_study=True) for i, item in enumerate(items)]
    if isinstance(section, list):
        reader.fail((stage.name,), f"'{stage.name}' is one mapping of options, not a list")
    if stage.name == "generate" and isinstance(section, dict):  # teacher mappings -> specs with settings
        from teachfit.teachers import teacher_from_mapping

        section = dict(section)
        teachers = section.get("teacher") or []
        teachers = teachers if isinstance(teachers, list) else [teachers]
        section["teacher"] = [teacher_from_mapping(t, reader, ("generate", "teacher", i)) for i, t in enumerate(teachers)]
    return reader.section(stage.config, section, (stage.name,), in_study=True)


def config_from_file(cls: type, path: Path) -> dict[str, Any]:
    """The options a `--config` YAML file gives (checked with line numbers), as field -> value."""
    data, lines = read_yaml(path)
    config = SectionReader(path, lines).section(cls, data or {}, ())
    return {f.name: getattr(config, f.name) for f in fields(cls) if f.name in (data or {})}
