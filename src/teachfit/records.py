"""What a pair is: record schemas, validated into Pairs (file formats: teachfit.files).

Accepted record formats (detected per record):
  plain     {"id", "instruction", "response", "teacher"?}
  alpaca    {"instruction", "input"?, "output"}            (input is appended to the instruction)
  messages  {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}
  sharegpt  {"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}
  zoo       {"uuid", "instruction", <generator>: {"content", <reward model>: float, ...}, ...}
  ultrafeedback {"instruction", "completions": [{"model", "response", "overall_score", ...}]}
  distilabel {"instruction", "generations": [str, ...], "model_names": [str, ...], "ratings"?: [float, ...]}
(the last three hold several teachers' answers and give one Pair per generator; an answer that
cannot be read, such as a struct without `content`, a generator column holding a string or a
completion without `response`, is a bad row naming its generator, and a null generator column
means that generator did not answer).
distilabel: generation i is answered by model_names[i] (its teacher) and rated ratings[i], kept as
the pair's field `rating` (so `--reward-column rating` takes it as the reward); the row's scalar
fields travel with each pair. Lists of different lengths, a generation that is not a string and a
missing model name are bad rows (generations numbered from 1). A model named twice in one row
(distilabel's num_generations > 1) gives samples: ids `<id>#s0`, `<id>#s1`, ... as generate writes.
A reward column (`with_reward`) is a field of the record or of a generator's answer; a dotted name
(`annotations.helpfulness.Rating`) reads a nested field, a key holding the dots literally winning.
Like a plain column it must hold a number: a string such as "4" is a bad row, not read as 4.
A missing `id` becomes a hash of the instruction, so the same instruction answered by several
teachers keeps one id; a missing `teacher` becomes the file's stem.
"""
from __future__ import annotations

import hashlib
import os
import re
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any


def location(path: str | os.PathLike, line: int | None) -> str:
    """Where a record is: `file:line`, `hf-dataset:<id>[:split]:row N` (a dataset's row, so the
    number is not read as a split), or the path alone."""
    if line is None:
        return str(path)
    return f"{path}:row {line}" if str(path).startswith("hf-dataset:") else f"{path}:{line}"


def split_location(text: str) -> tuple[str, int | None]:
    """The inverse of location(): (path, line or row number) of `file:N` or `...:row N`, else (text, None)."""
    path, _, number = text.rpartition(":")
    number = number.removeprefix("row ")
    return (path, int(number)) if path and number.isdigit() else (text, None)


class InputError(ValueError):
    """A bad input record: says which file, which line or row, and what was wrong."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{location(path, line)}: {reason}")

    def as_row(self) -> dict[str, Any]:
        """The one shape of a skipped row in every stage's stats: path, line, reason."""
        return {"path": self.path, "line": self.line, "reason": self.reason}


@dataclass
class Pair:
    """One instruction with one teacher's response."""

    id: str
    instruction: str
    response: str
    teacher: str
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line" it was read from, for error messages

    def to_dict(self) -> dict[str, Any]:
        """The pair as a flat JSON-ready dict (extra fields merged in)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("extra", "source")}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


@dataclass
class ReadStats:
    """What reading dropped, by reason (datatrove-style counters)."""

    read: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, error: InputError) -> None:
        """Record one skipped row."""
        self.skipped.append(error.as_row())

    @property
    def counts(self) -> dict[str, int]:
        """Skipped rows counted by reason."""
        counts: dict[str, int] = {}
        for row in self.skipped:
            key = "dropped_" + row["reason"].split(":")[0].split(" (")[0].replace(" ", "_")
            counts[key] = counts.get(key, 0) + 1
        return counts


_SAMPLE_SUFFIX = re.compile(r"#s\d+$")


def instruction_key(row: dict[str, Any]) -> str:
    """The instruction a row answers: its `instruction_id`, else its id without a `#s<k>` sample suffix."""
    value = row.get("instruction_id")
    if value not in (None, ""):
        return str(value)
    return _SAMPLE_SUFFIX.sub("", str(row["id"]))


def pair_instruction(pair: "Pair") -> str:
    """The instruction a Pair answers: instruction_key of its id and extra fields."""
    return instruction_key({"id": pair.id, **pair.extra})


def instruction_id(instruction: str) -> str:
    """A stable id for an instruction text (first 16 hex digits of its sha256)."""
    return hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:16]


def has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds a lone UTF-16 surrogate (JSON's "\\ud800"), which no UTF-8 file can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _turns(record: dict[str, Any], key: str, role_key: str, text_key: str) -> tuple[Any, Any]:
    turns = record[key]
    if not isinstance(turns, list):
        raise ValueError(f"wrong type: '{key}' must be a list of turns")
    roles = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise ValueError(f"wrong type: '{key}' turn {number} is a {type(turn).__name__}, not an object "
                             f"with '{role_key}' and '{text_key}'")
    found = [(roles.get(t.get(role_key)) if isinstance(t.get(role_key), str) else None, t.get(text_key)) for t in turns]
    user = next((text for role, text in found if role == "user"), None)
    assistant = next((text for role, text in found if role == "assistant"), None)
    if user is None or assistant is None:
        raise ValueError(f"missing field: '{key}' needs one user and one assistant turn")
    return user, assistant


def _instruction_response(record: dict[str, Any]) -> tuple[str, str]:
    if "messages" in record:
        return _turns(record, "messages", "role", "content")
    if "conversations" in record:
        return _turns(record, "conversations", "from", "value")
    if "instruction" not in record:
        raise ValueError("missing field: 'instruction' (or 'messages' / 'conversations')")
    instruction = record["instruction"]
    if record.get("input"):
        if not isinstance(instruction, str) or not isinstance(record["input"], str):
            raise ValueError("wrong type: instruction and input must be strings")
        instruction = f"{instruction}\n\n{record['input']}"
    for key in ("response", "output"):
        if key in record:
            return instruction, record[key]
    raise ValueError("missing field: 'response' (or 'output')")


def pair_from_record(record: Any, default_teacher: str) -> Pair:
    """Validate one raw record and turn it into a Pair; raises ValueError with the reason."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object: {type(record).__name__}")
    if record.get("error"):
        raise ValueError(f"generation error: {record['error']} (re-run generate to retry it)")
    instruction, response = _instruction_response(record)
    if not isinstance(instruction, str) or not isinstance(response, str):
        raise ValueError("wrong type: instruction and response must be strings")
    if not instruction.strip():
        raise ValueError("empty instruction")
    if not response.strip():
        raise ValueError("empty response")
    for name, text in (("instruction", instruction), ("response", response)):
        if has_lone_surrogate(text):
            raise ValueError(f"invalid unicode (lone surrogate) in the {name}")
    teacher = record.get("teacher") or record.get("generator") or default_teacher
    pair_id = record.get("id")
    pair_id = str(pair_id) if pair_id not in (None, "") else instruction_id(instruction)
    known = {"id", "instruction", "input", "output", "response", "teacher", "messages", "conversations", "error"}
    extra = {k: v for k, v in record.items() if k not in known}
    return Pair(id=pair_id, instruction=instruction, response=response, teacher=str(teacher), extra=extra)


# --- Multi-teacher datasets: one record holds every generator's answer to one instruction ---
# Generator-Zoo (Magpie-100K-Generator-Zoo, the paper's released data): `uuid`, `instruction`, and
# one column per generator holding {content, <reward model name>: float, ...}.
# UltraFeedback: `instruction`, `completions: [{model, response, overall_score, ...}]`.
# Each expands into one plain record per generator (teacher = the generator's name, id = uuid or
# the instruction's hash), with the generator's numeric fields kept for `reward_column`.
_PLAIN_KEYS = ("response", "output", "messages", "conversations")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_ultrafeedback(record: dict[str, Any]) -> bool:
    completions = record.get("completions")
    return isinstance(completions, list) and any(isinstance(c, dict) and "model" in c for c in completions)


def _is_distilabel(record: dict[str, Any]) -> bool:
    return isinstance(record.get("generations"), list)


def _distilabel_answers(record: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]] | ValueError]:
    """(teacher, response, fields) of each generation of a distilabel row, or the reasons it cannot be read."""
    generations, models, ratings = record["generations"], record.get("model_names"), record.get("ratings")
    if not isinstance(models, list):
        what = "missing field" if models is None else "wrong type"
        return [ValueError(f"{what}: 'model_names' (the model of each of the {len(generations)} generations)")]
    for name, values in (("model_names", models), ("ratings", ratings)):
        if values is not None and (not isinstance(values, list) or len(values) != len(generations)):
            size = len(values) if isinstance(values, list) else f"a {type(values).__name__} of"
            return [ValueError(f"wrong shape: {len(generations)} generations but {size} {name} "
                               "(the lists must be the same length)")]
    counts: dict[str, int] = {}
    for model in models:
        if model not in (None, ""):
            counts[str(model)] = counts.get(str(model), 0) + 1
    answers: list[tuple[str, Any, dict[str, Any]] | ValueError] = []
    seen: dict[str, int] = {}
    for number, (text, model) in enumerate(zip(generations, models), start=1):
        if model in (None, ""):
            answers.append(ValueError(f"missing field: generation {number} has no model name in 'model_names'"))
            continue
        model = str(model)
        if not isinstance(text, str):
            kind = "is null" if text is None else f"is a {type(text).__name__}"
            answers.append(ValueError(f"wrong type: generation {number} (model '{model}') {kind}, not a string"))
            continue
        fields: dict[str, Any] = {}
        if ratings is not None:
            rating = ratings[number - 1]
            if rating is not None and not _is_number(rating):
                answers.append(ValueError(f"wrong type: rating of generation {number} (model '{model}') "
                                          f"holds {str(rating)[:40]!r}, not a number"))
                continue
            fields["rating"] = rating
        if counts[model] > 1:  # one model sampled several times: samples, numbered as generate does
            fields["sample"] = seen.get(model, 0)
            seen[model] = fields["sample"] + 1
        answers.append((model, text, fields))
    return answers


def expand_wide_record(record: Any, generators: set[str] | frozenset[str] = frozenset(),
                       reward_column: str | None = None) -> list[dict[str, Any] | ValueError] | None:
    """The answers of a Generator-Zoo, UltraFeedback or distilabel record, or None for any other record: a plain
    record per generator, or a ValueError naming the generator whose answer cannot be read (a
    struct without `content`, a generator column holding a string, a completion without
    `response` or `model`). `generators`: columns known to hold generators in this file (a Zoo
    generator is a column holding a struct with `content`; see WideLayout). A generator whose
    column is null did not answer this instruction: no record, no error. A dotted `reward_column`
    (`annotations.helpfulness.Rating`) is read from the generator's own fields, else from the row,
    and kept under that name."""
    if not isinstance(record, dict) or "instruction" not in record or any(k in record for k in _PLAIN_KEYS):
        return None
    instruction = record["instruction"]
    base_id = next((str(record[k]) for k in ("uuid", "id") if record.get(k) not in (None, "")), None)
    if base_id is None and isinstance(instruction, str):
        base_id = instruction_id(instruction)
    answers: list[tuple[str, Any, dict[str, Any]] | ValueError] = []
    if _is_distilabel(record):
        answers = _distilabel_answers(record)
        shared = {k: v for k, v in record.items() if k not in ("uuid", "id", "instruction")
                  and (v is None or isinstance(v, (str, int, float, bool)))}
    elif _is_ultrafeedback(record):
        shared: dict[str, Any] = {}
        for number, completion in enumerate(record["completions"], start=1):
            if not isinstance(completion, dict):
                answers.append(ValueError(f"wrong type: completion {number} is a {type(completion).__name__}, "
                                          "not an object with 'model' and 'response'"))
            elif completion.get("model") in (None, ""):
                answers.append(ValueError(f"missing field: completion {number} has no 'model' (its generator)"))
            elif completion.get("response") is None:
                answers.append(ValueError(f"missing field: completion {number} of generator "
                                          f"'{completion['model']}' has no 'response'"))
            else:
                answers.append((str(completion["model"]), completion["response"], completion))
    else:
        names = {k for k, v in record.items() if k in generators or (isinstance(v, dict) and "content" in v)}
        if not names:
            return None
        for name, value in record.items():
            if name not in names or value is None:  # a null column: this generator did not answer
                continue
            if not isinstance(value, dict):
                answers.append(ValueError(f"wrong type: generator '{name}' holds a {type(value).__name__}, "
                                          "not a struct with 'content'"))
            elif value.get("content") is None:
                answers.append(ValueError(f"missing field: generator '{name}' has no 'content'"))
            else:
                answers.append((str(name), value["content"], value))
        shared = {k: v for k, v in record.items() if k not in names and k not in ("uuid", "id", "instruction")
                  and (v is None or isinstance(v, (str, int, float, bool)))}
    out: list[dict[str, Any] | ValueError] = []
    for answer in answers:
        if isinstance(answer, ValueError):
            out.append(answer)
            continue
        teacher, response, fields = answer
        numeric = {k: v for k, v in fields.items() if _is_number(v)}
        if "rating" in fields and _is_distilabel(record):
            numeric["rating"] = fields["rating"]  # null when the judge gave none
        answer_id = base_id
        if "sample" in numeric and _is_distilabel(record) and base_id is not None:
            answer_id = f"{base_id}#s{numeric['sample']}"
            numeric["instruction_id"] = base_id
        plain = {**shared, **numeric, "id": answer_id, "instruction": instruction, "response": response,
                 "teacher": teacher}
        if reward_column and "." in reward_column and reward_column not in plain:
            for source in (fields, record):
                try:
                    plain[reward_column] = column_value(source, reward_column)
                    break
                except _NotFound:
                    continue
        out.append(plain)
    return out


class WideLayout:
    """Reads the multi-teacher records of one file, remembering which columns hold generators.

    A Zoo generator is known by a row in which its column holds a struct with `content`; a row in
    which a known generator's column holds something else (a string, a struct without `content`)
    is a bad answer of that generator. A bad cell in a column not yet known as a generator is kept
    (its line) until the column turns out to be one, and then reported: so a string in the first
    row is found as well as one in the last. Columns that never hold a generator are metadata."""

    _SUSPECT = (str, dict, list)

    def __init__(self, reward_column: str | None = None) -> None:
        self.reward_column = reward_column  # a dotted one is read inside each generator's answer
        self.generators: set[str] = set()
        self._pending: dict[str, dict[str, Any]] = {}  # column -> {type name: array of lines}

    def expand(self, record: Any, line: int) -> tuple[list[dict[str, Any]], list[tuple[int, str]]] | None:
        """(the plain records of `record`, [(line, reason)] of the bad answers found now, earlier
        lines included), or None when `record` is not a multi-teacher record."""
        expanded = expand_wide_record(record, self.generators, self.reward_column)
        if expanded is None:
            return None
        problems: list[tuple[int, str]] = []
        if not _is_ultrafeedback(record) and not _is_distilabel(record):
            new = {k for k, v in record.items() if isinstance(v, dict) and "content" in v} - self.generators
            for name in sorted(new):
                self.generators.add(name)
                for type_name, lines in self._pending.pop(name, {}).items():
                    kind = ("missing field: generator '{}' has no 'content'" if type_name == "dict" else
                            "wrong type: generator '{}' holds a " + type_name + ", not a struct with 'content'")
                    problems.extend((earlier, kind.format(name)) for earlier in lines)
            for name, value in record.items():
                if name not in self.generators and isinstance(value, self._SUSPECT) and name != "instruction" \
                        and not (isinstance(value, dict) and "content" in value):
                    self._pending.setdefault(name, {}).setdefault(type(value).__name__, array("q")).append(line)
        records = [r for r in expanded if isinstance(r, dict)]
        problems.sort()
        problems += [(line, str(error)) for error in expanded if isinstance(error, ValueError)]
        return records, problems


class _NotFound(LookupError):
    """A dotted column's path stops: `at` (the path so far, "" at the top) and why."""

    def __init__(self, at: str, reason: str):
        super().__init__(reason)
        self.at, self.reason = at, reason


def _nested(value: Any, parts: list[str], at: str = "") -> Any:
    if not parts:
        return value
    if not isinstance(value, dict):
        raise _NotFound(at, f"'{at}' holds a {type(value).__name__}, not an object")
    for cut in range(len(parts), 0, -1):  # the longest key first: a key holding dots literally wins
        key = ".".join(parts[:cut])
        if key in value:
            return _nested(value[key], parts[cut:], f"{at}.{key}" if at else key)
    keys = ", ".join(sorted(map(str, value))) or "none"
    raise _NotFound(at, f"'{at}' has no '{'.'.join(parts)}'; keys there: {keys}" if at else "")


def column_value(record: dict[str, Any], column: str) -> Any:
    """record[column], else the nested field a dotted column names (`a.b.c`: record["a"]["b"]["c"];
    at each level a key holding dots literally is tried first); _NotFound where the path stops."""
    return _nested(record, column.split("."))


def with_reward(record: Any, reward_column: str | None) -> Any:
    """`record` with the field `reward_column` names (a top-level column, or a dotted path into nested
    objects: column_value) copied to `reward`; ValueError naming the columns that exist, or where
    a dotted path stops."""
    if reward_column is None or not isinstance(record, dict):
        return record
    try:
        value = column_value(record, reward_column)
    except _NotFound as stop:
        if stop.at:
            raise ValueError(f"missing field: reward column '{reward_column}' ({stop.reason})") from None
        columns = sorted(k for k in record if k not in ("id", "instruction", "response", "teacher"))
        raise ValueError(f"missing field: reward column '{reward_column}' (columns here: {', '.join(columns) or 'none'})") from None
    if isinstance(value, str):  # ratings stored as text, as UltraFeedback's annotations are ("4")
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if not _is_number(value) or value != value:
        raise ValueError(f"wrong type: reward column '{reward_column}' holds {str(value)[:40]!r}, not a number")
    return {**record, "reward": float(value)}
