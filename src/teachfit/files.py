"""File formats: JSONL, JSON arrays, Parquet and `datasets` save_to_disk folders in; JSONL,
Parquet and CSV out (every write atomic: teachfit.atomic). `read_records` is the one strict
reader of JSON objects (file:line errors); `read_pairs` turns files into validated Pairs
(record schemas: teachfit.records). Inputs are files, run directories, folders of Parquet
files, `datasets` save_to_disk folders, or `hf-dataset:<hub id or path>[:split]` (read through
`datasets`: teachfit.hub_datasets).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from teachfit.atomic import atomic_write, write_json_atomic
from teachfit.hub_datasets import default_teacher, is_hub_spec, is_saved_dataset
from teachfit.records import InputError, Pair, ReadStats, WideLayout, location, pair_from_record, with_reward

RESPONSE_SUFFIXES = (".jsonl", ".json", ".parquet")


def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line or row number from 1, raw record) from a JSONL, JSON-array or Parquet file, a
    `datasets` save_to_disk folder or an `hf-dataset:` input.

    Streams: JSONL line by line, Parquet and `datasets` batch by batch, so memory stays flat.
    """
    from teachfit import hub_datasets

    if is_hub_spec(path):
        yield from hub_datasets.spec_records(path)
        return
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    if path.is_dir() and (path / "state.json").is_file():  # a `datasets` save_to_disk folder
        yield from hub_datasets.saved_records(path)
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


def read_records(path: str | os.PathLike, on_error: Callable[[InputError], None] | None = None
                 ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number from 1, record) of each JSON object in a file: the one strict reader.
    A line that is not UTF-8, not JSON or not an object is an InputError at file:line: raised, or,
    with `on_error`, handed to it and skipped. A missing or unreadable file always raises."""
    for number, record in iter_raw_records(path):
        if not isinstance(record, InputError) and not isinstance(record, dict):
            record = InputError(path, number, f"not a JSON object: {type(record).__name__}")
        if isinstance(record, InputError):
            if on_error is None:
                raise record
            on_error(record)
            continue
        yield number, record


def _bad_bytes(error: UnicodeDecodeError, column: int) -> str:
    return f"byte 0x{error.object[error.start]:02x} at column {column} (save the file as UTF-8)"


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        # pre_buffer off: with it on (pyarrow's default) the reader keeps every row group's column
        # chunks it read until the file is closed, so memory grew with the file (apache/arrow#39808):
        # +320 MB over a 2M-pair Zoo file read here, flat without it
        batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=1024)
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
    record (or generator) into `pair.extra["reward"]` (a dotted name reads a nested field), and its
    absence is an error.

    Within one teacher, a repeated id or a repeated (instruction, response) is a duplicate (the
    same id under several teachers is the normal case: one instruction, several answers)."""
    stats = stats if stats is not None else ReadStats()
    seen = _Seen()
    for path in paths:
        layout = WideLayout(reward_column)  # which columns of this file hold generators
        file_teacher = default_teacher(path)  # a record without a `teacher` is the file's (stem)
        seen.start_file(path)
        for number, raw in read_records(path, stats.skip if skip_invalid else None):
            wide = layout.expand(raw, number)
            records, problems = wide if wide is not None else ([raw], [])
            for line, reason in problems:  # an answer of one generator that cannot be read
                if not skip_invalid:
                    raise InputError(path, line, reason)
                stats.skip(InputError(path, line, reason))
            for record in records:
                try:
                    pair = _checked_pair(record, path, number, reward_column, seen, file_teacher,
                                         generator=record.get("teacher") if wide is not None else None)
                except InputError as error:
                    if not skip_invalid:
                        raise
                    stats.skip(error)
                    continue
                stats.read += 1
                yield pair


class _Seen:
    """read_pairs' memory of what it read, for the duplicate checks: each teacher's ids and
    (instruction, response) digests with where each was first, held compactly (teachfit.keyindex.
    DigestTable: ~50 bytes a check, where dicts of tuples and strings held ~300 a pair, 600 MB at 2M).
    Where a pair was is keyindex.location(file number, record number)."""

    def __init__(self) -> None:
        from teachfit.keyindex import DigestTable, location as packed, unpack

        self.ids, self.pairs, self._paths = DigestTable(), DigestTable(), []
        self._packed, self._unpack = packed, unpack

    def start_file(self, path: str | os.PathLike) -> None:
        """The records that follow are this file's."""
        self._paths.append(path)

    def here(self, number: int) -> int:
        """Record `number` of the current file, as one number."""
        return self._packed(len(self._paths) - 1, number)

    def where(self, code: int) -> str:
        """The location (file:line) of a here()."""
        file, number = self._unpack(code)
        return location(self._paths[file], number)


def _digest(*parts: str) -> bytes:
    """16 bytes of the sha256 of the parts, JSON-encoded together (a duplicate check's key)."""
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).digest()[:16]


def _checked_pair(record: dict[str, Any], path: str | os.PathLike, number: int, reward_column: str | None,
                  seen: _Seen, file_teacher: str, generator: str | None = None) -> Pair:
    """The Pair of one plain record (its reward from `reward_column`, its teacher `file_teacher`
    unless it names one), refused (InputError at file:line) when invalid or a duplicate;
    `generator`: the record is that generator's answer in a multi-teacher record, and a reason names it."""
    of = f" (generator '{generator}')" if generator is not None else ""
    try:
        pair = pair_from_record(with_reward(record, reward_column), default_teacher=file_teacher)
    except ValueError as error:
        raise InputError(path, number, f"{error}{of}") from None
    except (TypeError, AttributeError, KeyError) as error:  # a shape no check above foresaw
        raise InputError(path, number, f"invalid record ({type(error).__name__}: {error}){of}") from None
    id_key = _digest(pair.teacher, pair.id)
    if (first := seen.ids.get(id_key)) is not None:
        raise InputError(path, number, f"duplicate id: '{pair.id}' of teacher '{pair.teacher}' "
                                       f"(first at {seen.where(first)})")
    pair_key = _digest(pair.teacher, pair.instruction, pair.response)
    if (first := seen.pairs.get(pair_key)) is not None:
        raise InputError(path, number, f"duplicate pair: the same instruction and response of teacher "
                                       f"'{pair.teacher}' (first at {seen.where(first)})")
    here = seen.here(number)
    seen.ids.add(id_key, here)
    seen.pairs.add(pair_key, here)
    pair.source = location(path, number)
    return pair


def parquet_rows(path: Path) -> int:
    """The row count in a Parquet file's footer; a file that is not Parquet is an InputError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InputError(path, None, f"not a valid Parquet file ({str(error).splitlines()[0][:200]})") from None


def count_records(paths: Iterable[str | os.PathLike]) -> int:
    """Rows in input files (non-blank JSONL lines, Parquet and `datasets` row counts; 0 for other
    formats), for progress bars; a file that is not valid Parquet is an InputError, like reading it."""
    from teachfit import hub_datasets

    total = 0
    for path in map(Path, paths):
        spec = hub_datasets.parse(path) if is_hub_spec(path) else None
        if spec is not None and spec.local and Path(spec.source).is_file():
            path = Path(spec.source)  # hf-dataset:<file>: the file's own count
        if is_hub_spec(path) or is_saved_dataset(path):
            total += hub_datasets.count_rows(path)
        elif path.suffix == ".parquet" and path.is_file():
            total += parquet_rows(path)
        elif path.suffix == ".jsonl" and path.is_file():
            with path.open("rb") as handle:
                total += sum(1 for line in handle if line.strip())
    return total


def expand_inputs(inputs: Iterable[str | os.PathLike], subdir: str = "responses") -> list[Path]:
    """Files named directly, plus every response file inside a run directory's `subdir`; an
    `hf-dataset:` input is opened now (hub_datasets.checked) and kept as its spelling."""
    from teachfit import hub_datasets

    files: list[Path] = []
    for item in inputs:
        if is_hub_spec(item):
            files.append(Path(hub_datasets.checked(item)))
            continue
        item = Path(item)
        if is_saved_dataset(item):
            files.extend(hub_datasets.saved_dataset_parts(item))
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
        if path.suffix == ".parquet" and not is_hub_spec(path):
            parquet_rows(path)
    return files


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL atomically; returns how many."""
    count = 0
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_table(path: str | os.PathLike, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> None:
    """Write rows to Parquet (metadata under the key `teachfit`), JSONL or CSV by suffix, atomically
    (JSONL and CSV: the metadata beside, in <path>.meta.json)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows) if rows else pa.table({})
        table = table.replace_schema_metadata({"teachfit": json.dumps(metadata)})
        with atomic_write(path, "wb") as handle:
            pq.write_table(table, handle)
    elif path.suffix == ".jsonl":
        from teachfit.atomic import strict_json

        write_jsonl(path, (strict_json(row) for row in rows))  # strict JSON: no NaN / Infinity tokens
        write_json_atomic(Path(str(path) + ".meta.json"), metadata)
    elif path.suffix == ".csv":
        import csv

        with atomic_write(path, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)
        write_json_atomic(Path(str(path) + ".meta.json"), metadata)
    else:
        raise InputError(path, None, f"unknown output format '{path.suffix}': use .parquet, .jsonl or .csv")


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
    rows, metadata = read_table_columnar(path)
    return (rows.to_pylist() if hasattr(rows, "to_pylist") else rows), metadata


def read_table_columnar(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """`read_table`, with a Parquet file's rows as a pyarrow.Table (columns: no dict per row, for
    millions of rows); JSONL and CSV rows as read_table reads them (a list of dicts)."""
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
        return table, metadata if isinstance(metadata, dict) else {}
    meta_path = Path(str(path) + ".meta.json")
    metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if path.suffix == ".csv":
        import csv

        with path.open(encoding="utf-8") as handle:
            return [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(handle)], metadata
    return [record for _, record in read_records(path)], metadata
