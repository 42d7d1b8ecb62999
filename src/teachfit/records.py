"""Plain records and their files: instruction-response pairs read from JSONL or Parquet.

Accepted record formats (detected per record):
  plain     {"id", "instruction", "response", "teacher"?}
  alpaca    {"instruction", "input"?, "output"}            (input is appended to the instruction)
  messages  {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}
  sharegpt  {"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}
  zoo       {"uuid", "instruction", <generator>: {"content", <reward model>: float, ...}, ...}
  ultrafeedback {"instruction", "completions": [{"model", "response", "overall_score", ...}]}
(the last two hold several teachers' answers and give one Pair per generator). Inputs are files,
run directories, folders of Parquet files, or `datasets` save_to_disk folders.
A missing `id` becomes a hash of the instruction, so the same instruction answered by several
teachers keeps one id; a missing `teacher` becomes the file's stem.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

RESPONSE_SUFFIXES = (".jsonl", ".json", ".parquet")


class InputError(ValueError):
    """A bad input record: says which file, which line or row, and what was wrong."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")

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


def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line or row number from 1, raw record) from a JSONL, JSON-array or Parquet file.

    Streams: JSONL line by line and Parquet batch by batch, so memory stays flat.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    if path.is_dir() and (path / "state.json").is_file():  # a `datasets` save_to_disk folder
        yield from _saved_dataset_records(path)
        return
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    if path.suffix == ".json":
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line_start = raw.rfind(b"\n", 0, error.start) + 1
            raise InputError(path, raw.count(b"\n", 0, error.start) + 1,
                             f"not UTF-8: {_bad_bytes(error, error.start - line_start + 1)}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(path, error.lineno, f"malformed JSON: {error.msg} at column {error.colno}") from None
        if not isinstance(data, list):
            raise InputError(path, None, "a .json file must hold a list of records")
        yield from enumerate(data, start=1)
        return
    if path.suffix != ".jsonl":
        raise InputError(path, None, f"unknown format '{path.suffix}': use .jsonl, .json or .parquet")
    with path.open("rb") as handle:  # bytes, decoded line by line: one bad line is one bad record
        for number, raw_line in enumerate(handle, start=1):
            if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]  # a UTF-8 byte order mark
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, InputError(path, number, f"not UTF-8: {_bad_bytes(error, error.start + 1)}")
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield number, InputError(path, number, f"malformed JSON: {error.msg} at column {error.colno}")


def _bad_bytes(error: UnicodeDecodeError, column: int) -> str:
    return f"byte 0x{error.object[error.start]:02x} at column {column} (save the file as UTF-8)"


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError, ValueError) as error:
        where = row + 1 if row else None
        raise InputError(path, where, f"not a valid Parquet file ({str(error).splitlines()[0][:200]})") from None


def read_pairs(
    paths: Iterable[str | os.PathLike], skip_invalid: bool = False, stats: ReadStats | None = None,
    reward_column: str | None = None,
) -> Iterator[Pair]:
    """Stream validated Pairs from files; a bad record raises InputError unless skip_invalid,
    in which case it is recorded in `stats` and skipped. Multi-teacher records (Generator-Zoo,
    UltraFeedback) give one Pair per generator; `reward_column` copies that numeric field of each
    record (or generator) into `pair.extra["reward"]`, and its absence is an error.

    Within one teacher, a repeated id or a repeated (instruction, response) is a duplicate (the
    same id under several teachers is the normal case: one instruction, several answers)."""
    stats = stats if stats is not None else ReadStats()
    seen_ids: dict[tuple[str, str], str] = {}
    seen_pairs: dict[tuple[str, bytes], str] = {}
    for path in paths:
        for number, record in expand_records(iter_raw_records(path), path, reward_column):
            try:
                if isinstance(record, InputError):
                    raise record
                try:
                    pair = pair_from_record(record, default_teacher=Path(path).stem)
                except ValueError as error:
                    raise InputError(path, number, str(error)) from None
                except (TypeError, AttributeError, KeyError) as error:  # a shape no check above foresaw
                    raise InputError(path, number, f"invalid record ({type(error).__name__}: {error})") from None
                where = f"{path}:{number}"
                id_key = (pair.teacher, pair.id)
                if id_key in seen_ids:
                    raise InputError(path, number, f"duplicate id: '{pair.id}' of teacher '{pair.teacher}' "
                                                   f"(first at {seen_ids[id_key]})")
                digest = hashlib.sha256(json.dumps([pair.instruction, pair.response]).encode("utf-8")).digest()[:16]
                pair_key = (pair.teacher, digest)
                if pair_key in seen_pairs:
                    raise InputError(path, number, f"duplicate pair: the same instruction and response of teacher "
                                                   f"'{pair.teacher}' (first at {seen_pairs[pair_key]})")
                seen_ids[id_key], seen_pairs[pair_key] = where, where
            except InputError as error:
                if not skip_invalid:
                    raise
                stats.skip(error)
                continue
            stats.read += 1
            pair.source = f"{path}:{number}"
            yield pair


def parquet_rows(path: Path) -> int:
    """The row count in a Parquet file's footer; a file that is not Parquet is an InputError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InputError(path, None, f"not a valid Parquet file ({str(error).splitlines()[0][:200]})") from None


def count_records(paths: Iterable[str | os.PathLike]) -> int:
    """Rows in input files (non-blank JSONL lines, Parquet row counts; 0 for other formats), for
    progress bars; a file that is not valid Parquet is an InputError, like reading it."""
    total = 0
    for path in map(Path, paths):
        if path.suffix == ".parquet" and path.is_file():
            total += parquet_rows(path)
        elif path.suffix == ".jsonl" and path.is_file():
            with path.open("rb") as handle:
                total += sum(1 for line in handle if line.strip())
    return total


def expand_inputs(inputs: Iterable[str | os.PathLike], subdir: str = "responses") -> list[Path]:
    """Files named directly, plus every response file inside a run directory's `subdir`."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if is_saved_dataset(item):
            files.extend(saved_dataset_parts(item))
        elif item.is_dir():
            folder = item / subdir if (item / subdir).is_dir() else item
            found = sorted(p for p in folder.iterdir() if p.suffix in RESPONSE_SUFFIXES)
            found = found or sorted(folder.rglob("*.parquet"))  # a hub-style dataset folder (data/*.parquet)
            if not found:
                raise InputError(item, None, f"no {'/'.join(RESPONSE_SUFFIXES)} files in {folder}")
            files.extend(found)
        elif not item.exists():
            raise InputError(item, None, "file not found")
        else:
            files.append(item)
    for path in files:  # a damaged Parquet file is reported now, before any model is loaded
        if path.suffix == ".parquet":
            parquet_rows(path)
    return files


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL atomically (temp file then rename); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def write_table(path: str | os.PathLike, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> None:
    """Write rows to Parquet (metadata under the key `teachfit`), JSONL or CSV by suffix, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows) if rows else pa.table({})
        table = table.replace_schema_metadata({"teachfit": json.dumps(metadata)})
        pq.write_table(table, tmp)
    elif path.suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        Path(str(path) + ".meta.json").write_text(json.dumps(metadata, indent=2))
    elif path.suffix == ".csv":
        import csv

        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)
        Path(str(path) + ".meta.json").write_text(json.dumps(metadata, indent=2))
    else:
        raise InputError(path, None, f"unknown output format '{path.suffix}': use .parquet, .jsonl or .csv")
    os.replace(tmp, path)


def _cell(text: str) -> Any:
    """A CSV cell back to a number or boolean where it is one."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text) if any(c in text for c in ".eEn") else int(text)
    except ValueError:
        return text


def read_table(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read rows and teachfit metadata written by `write_table`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            raw = (table.schema.metadata or {}).get(b"teachfit") or (pq.read_metadata(path).metadata or {}).get(b"teachfit")
        except (pa.ArrowException, OSError, ValueError) as error:
            raise InputError(path, None, f"not a valid Parquet file ({str(error).splitlines()[0][:200]})") from None
        try:
            metadata = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(path, None, "its teachfit metadata is not valid JSON") from None
        return table.to_pylist(), metadata if isinstance(metadata, dict) else {}
    meta_path = Path(str(path) + ".meta.json")
    metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if path.suffix == ".csv":
        import csv

        with path.open(encoding="utf-8") as handle:
            return [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(handle)], metadata
    rows = [record for _, record in iter_raw_records(path)]
    bad = [r for r in rows if isinstance(r, InputError)]
    if bad:
        raise bad[0]
    return rows, metadata


# --- Multi-teacher datasets: one record holds every generator's answer to one instruction ---
# Generator-Zoo (Magpie-100K-Generator-Zoo, the paper's released data): `uuid`, `instruction`, and
# one column per generator holding {content, <reward model name>: float, ...}.
# UltraFeedback: `instruction`, `completions: [{model, response, overall_score, ...}]`.
# Each expands into one plain record per generator (teacher = the generator's name, id = uuid or
# the instruction's hash), with the generator's numeric fields kept for `reward_column`.
_PLAIN_KEYS = ("response", "output", "messages", "conversations")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expand_wide_record(record: Any) -> list[dict[str, Any]] | None:
    """The plain records of a Generator-Zoo or UltraFeedback record, or None for any other record."""
    if not isinstance(record, dict) or "instruction" not in record or any(k in record for k in _PLAIN_KEYS):
        return None
    instruction = record["instruction"]
    base_id = next((str(record[k]) for k in ("uuid", "id") if record.get(k) not in (None, "")), None)
    if base_id is None and isinstance(instruction, str):
        base_id = instruction_id(instruction)
    completions = record.get("completions")
    if isinstance(completions, list) and completions and all(isinstance(c, dict) and "model" in c for c in completions):
        answers = [(str(c["model"]), c.get("response"), c) for c in completions]
        shared: dict[str, Any] = {}
    else:
        answers = [(str(k), v.get("content"), v) for k, v in record.items()
                   if isinstance(v, dict) and isinstance(v.get("content"), str)]
        if not answers:
            return None
        names = {k for k, _, _ in answers}
        shared = {k: v for k, v in record.items() if k not in names and k not in ("uuid", "id", "instruction")
                  and (v is None or isinstance(v, (str, int, float, bool)))}
    out = []
    for teacher, response, fields in answers:
        if response is None:  # this generator did not answer this instruction
            continue
        numeric = {k: v for k, v in fields.items() if _is_number(v)}
        out.append({**shared, **numeric, "id": base_id, "instruction": instruction, "response": response,
                    "teacher": teacher})
    return out


def _with_reward(record: Any, reward_column: str | None) -> Any:
    """`record` with record[reward_column] copied to `reward`; ValueError naming the columns that exist."""
    if reward_column is None or not isinstance(record, dict):
        return record
    if reward_column not in record:
        columns = sorted(k for k in record if k not in ("id", "instruction", "response", "teacher"))
        raise ValueError(f"missing field: reward column '{reward_column}' (columns here: {', '.join(columns) or 'none'})")
    value = record[reward_column]
    if not _is_number(value) or value != value:
        raise ValueError(f"wrong type: reward column '{reward_column}' holds {str(value)[:40]!r}, not a number")
    return {**record, "reward": float(value)}


def expand_records(records: Iterable[tuple[int, Any]], path: str | os.PathLike, reward_column: str | None = None
                   ) -> Iterator[tuple[int, Any]]:
    """(number, record) with multi-teacher records expanded (several records share a number) and
    the reward column applied; a bad record comes out as an InputError, like a malformed line."""
    for number, record in records:
        if isinstance(record, InputError):
            yield number, record
            continue
        try:
            expanded = expand_wide_record(record)
            for plain in expanded if expanded is not None else [record]:
                yield number, _with_reward(plain, reward_column)
        except ValueError as error:
            yield number, InputError(path, number, str(error))


# --- Hugging Face `datasets` folders (save_to_disk): Arrow stream files listed in state.json ---
def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` is a `datasets` save_to_disk folder (a Dataset or a DatasetDict)."""
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def saved_dataset_parts(folder: Path) -> list[Path]:
    """The Dataset folders of a save_to_disk folder: itself, or each split of a DatasetDict."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        return [folder / split for split in splits]
    return [folder]


def _saved_dataset_records(folder: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa

    state = json.loads((folder / "state.json").read_text())
    row = 0
    for entry in state.get("_data_files", []):
        with pa.memory_map(str(folder / entry["filename"])) as source:
            for batch in pa.ipc.open_stream(source):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record
