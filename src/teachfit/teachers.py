"""Teachers as a study names them: a model spec with its sampling settings and its dataset's name.

On the command line a teacher is `SPEC?temperature=0.8&top_p=0.95&n=5&name=NAME`; in a study
file it may also be a mapping `{spec: SPEC, temperature: 0.8, name: NAME}`, whose values are
URL-encoded into the same form, so a value such as `x&n=3` stays one value and sets nothing else.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from teachfit.models.base import GenerationSettings

SETTING_TYPES = {"temperature": float, "top_p": float, "max_new_tokens": int, "seed": int, "n": int}


@dataclass(frozen=True)
class TeacherRequest:
    """One dataset to generate: a model spec, its sampling settings and the dataset's name."""

    spec: str
    settings: GenerationSettings
    name: str


def short_model_name(spec: str) -> str:
    """A readable name from a spec: the last path or id component, without .gguf."""
    body = spec.split(":", 1)[1] if ":" in spec else spec
    body = body.split("@")[0].split("?")[0].rstrip("/")
    return re.sub(r"\.gguf$", "", body.split("/")[-1]) or "teacher"


def student_name(spec: str) -> str:
    """The file-name form of a student spec (the last path or id component), checked by safe_name."""
    from teachfit.run import safe_name

    return safe_name(short_model_name(spec), "student name")


def dataset_name(spec: str, settings: GenerationSettings) -> str:
    """`<model>` for greedy decoding, with -t<T>-p<P> for sampling and -n<N> for N samples."""
    name = short_model_name(spec)
    if settings.temperature > 0:
        name += f"-t{settings.temperature:g}-p{settings.top_p:g}"
    if settings.n > 1:
        name += f"-n{settings.n}"
    return name


def parse_teacher(text: str, defaults: GenerationSettings) -> TeacherRequest:
    """Parse `SPEC[?key=value&...]`; keys: temperature, top_p, max_new_tokens, seed, n, name.
    The dataset name (given or derived) must be a safe file name (teachfit.run.safe_name)."""
    from teachfit.run import safe_name

    from teachfit.models import SPEC_OPTIONS, ModelSpec

    spec, name, overrides, engine = text, None, {}, []
    if "?" in text and "=" in text.rsplit("?", 1)[1]:
        spec, query = text.rsplit("?", 1)
        try:
            pairs = parse_qsl(query, strict_parsing=True)
        except ValueError:
            raise ValueError(f"teacher '{text}': settings must look like ?temperature=0.8&top_p=0.95") from None
        spec_keys = SPEC_OPTIONS.get(spec.partition(":")[0], {})  # vllm: engine options, openai: key_env
        for key, value in pairs:
            if key == "name":
                name = value
            elif key in spec_keys:  # a spec option: stays with the spec (ModelSpec.parse checks it)
                engine.append((key, value))
            elif key in SETTING_TYPES:
                try:
                    overrides[key] = SETTING_TYPES[key](value)
                except ValueError:
                    raise ValueError(f"teacher '{text}': {key}={value!r} is not a {SETTING_TYPES[key].__name__}") from None
            else:
                extra = f"; spec options: {', '.join(spec_keys)}" if spec_keys else ""
                raise ValueError(f"teacher '{text}': unknown setting '{key}' (known: {', '.join(SETTING_TYPES)}, name{extra})")
    settings = replace(defaults, **overrides)
    validate_settings(settings, text)
    name = name or dataset_name(spec, settings)
    if engine:  # `vllm:M?tensor_parallel_size=4...`, `openai:M@URL?key_env=K`: checked now, kept in `model`
        spec = str(ModelSpec.parse(f"{spec}?{urlencode(engine)}"))
    try:
        safe_name(name, "dataset name")
    except ValueError as error:
        raise ValueError(f"teacher '{text}': {error}") from None
    return TeacherRequest(spec=spec, settings=settings, name=name)


def validate_settings(settings: GenerationSettings, label: str) -> None:
    """Reject settings that cannot mean anything, naming the teacher."""
    if settings.temperature < 0 or not 0 < settings.top_p <= 1 or settings.max_new_tokens < 1 or settings.n < 1:
        raise ValueError(f"teacher '{label}': need temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, n >= 1")


TEACHER_KEYS = ("spec", "name") + tuple(SETTING_TYPES)


def teacher_from_mapping(item: Any, reader: Any, where: tuple) -> str:
    """A teacher entry of a study file: a spec string, or a mapping {spec, temperature, ...},
    made into `SPEC?k=v&...` with every value URL-encoded (parse_teacher decodes them)."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict) or not isinstance(item.get("spec"), str):
        reader.fail(where, "a teacher is a spec string or a mapping with 'spec' and settings")
    from teachfit.models import SPEC_OPTIONS

    engine_keys = tuple(SPEC_OPTIONS.get(item["spec"].partition(":")[0], {}))  # vllm: engine, openai: key_env
    for key, value in item.items():
        if key not in TEACHER_KEYS and key not in engine_keys:
            near = difflib.get_close_matches(str(key), TEACHER_KEYS + engine_keys, n=1)
            reader.fail(where + (key,), f"unknown teacher setting '{key}'" + (f" (did you mean '{near[0]}'?)" if near else "")
                        + (f"; spec options: {', '.join(engine_keys)}" if engine_keys else ""))
        if isinstance(value, (dict, list)) or value is None:
            reader.fail(where + (key,), f"teacher setting '{key}' must be one value, got {type(value).__name__}")
    text = {True: "true", False: "false"}
    query = urlencode([(k, text[v] if isinstance(v, bool) else v) for k, v in item.items() if k != "spec"])
    return f"{item['spec']}?{query}" if query else item["spec"]
