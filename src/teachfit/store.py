"""Content-addressed caches of per-pair results, safe against kill -9.

Every computed result is appended, batch by batch, to a JSONL shard owned by the running process
and flushed to disk; a shard's torn last line (a kill mid-write) is ignored on reading. A key is
the hash of everything the result depends on, so a re-run computes only what is new, and a pair
is never counted twice however often a run is interrupted.

Each line is {"key", "value", "sum"}, `sum` a short sha256 of the canonical JSON of key and value.
A line that is not UTF-8, not a JSON object, lacks a field, holds a value that is not an object
or fails its checksum (a flipped digit, an older format) is skipped and counted, and its result
is computed again: a damaged cache costs time, never a wrong number or a crash. Memory holds an
index of the lines (teachfit.keyindex), not the results: opening a cache of 10M entries scans its
shards' bytes, and a result is read (and checked) from disk when asked for.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from teachfit.keyindex import KeyIndex, key_code, location, scan_shard, unpack


def content_hash(*parts: Any) -> str:
    """sha256 (hex, 32 digits) of the JSON encoding of `parts`."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:32]


def content_hashes(first: Any, pairs: Iterable[tuple[Any, ...]]) -> list[str]:
    """content_hash(first, *rest) for each `rest` in `pairs`, equal to it digit for digit, with
    `first` (a scorer's key material) encoded once rather than once per pair."""
    head = json.dumps([first], sort_keys=True, ensure_ascii=False, default=str)[:-1]
    hashes = []
    for rest in pairs:
        blob = head + "".join(", " + json.dumps(part, sort_keys=True, ensure_ascii=False, default=str) for part in rest) + "]"
        hashes.append(hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32])
    return hashes


def line_checksum(key: str, value: dict[str, Any]) -> str:
    """The `sum` field of a cache line: sha256 (16 hex digits) of canonical JSON of [key, value]."""
    blob = json.dumps([key, value], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:16]


def parse_line(raw: bytes, check: bool = True) -> tuple[str, dict[str, Any]] | str:
    """(key, value) of one shard line, or the reason it cannot be used; `check=False` skips the
    checksum (a line this process wrote, or read and checked before)."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not_utf8"
    except json.JSONDecodeError:
        return "malformed"  # most often the torn last line of a killed run
    if not isinstance(entry, dict):
        return "not_object"
    key, value, checksum = entry.get("key"), entry.get("value"), entry.get("sum")
    if not isinstance(key, str) or not isinstance(value, dict) or not isinstance(checksum, str):
        return "missing_field"
    if check and line_checksum(key, value) != checksum:
        return "checksum"
    return key, value


class ResultCache:
    """key -> result dict, persisted as append-only JSONL shards in one folder.

    Memory holds only an index of where each line lies (teachfit.keyindex: 17 bytes an entry, a
    10M-entry cache in 170 MB), never the results: a value is read from its shard, and its line
    checked, when asked for (get_many), so the memory of a run does not grow with its pairs. Bad
    lines are counted in `skipped_lines` when found: at opening for a line whose key cannot be
    indexed, at reading for the others. Safe to use from two threads (a prefetching reader and
    the writer)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.skipped_lines: dict[str, int] = {}  # reason -> lines skipped (their results are recomputed)
        self._shards = sorted(self.folder.glob("shard-*.jsonl"))
        self._dead, self._readers, self._lock = set(), {}, threading.Lock()
        code_parts, place_parts = [], []
        for number, shard in enumerate(self._shards):
            codes, places = scan_shard(shard, number, self._odd_line)
            code_parts.append(codes)
            place_parts.append(places)
        self._index = KeyIndex.from_parts(code_parts, place_parts)
        self._own = len(self._shards)  # this process's shard, created on the first put
        self._shards.append(self.folder / f"shard-{uuid.uuid4().hex[:12]}.jsonl")
        self._handle = None

    @property
    def torn_lines(self) -> int:
        """Lines skipped so far, whatever the reason."""
        return sum(self.skipped_lines.values())

    def _skip(self, reason: str) -> None:
        self.skipped_lines[reason] = self.skipped_lines.get(reason, 0) + 1

    def _odd_line(self, raw: bytes) -> int | None:
        """A line whose key is not where the index scan looks: its code, or None when it is bad."""
        parsed = parse_line(raw)
        if isinstance(parsed, str):
            self._skip(parsed)
            return None
        return key_code(parsed[0])

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        """Lines indexed (a line is checked when its value is read)."""
        return len(self._index)

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached result for `key`, or None."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """The cached result of each key, or None where there is none (or only damaged lines)."""
        with self._lock:
            found = self._index.candidates([key_code(key) for key in keys])
            return [self._first_good(key, places) if places else None for key, places in zip(keys, found)]

    def _first_good(self, key: str, entries: list[tuple[int, bool, int, int]]) -> dict[str, Any] | None:
        for place, checked, run, position in entries:
            if place in self._dead:
                continue
            parsed = parse_line(self._read_line(place), check=not checked)
            if isinstance(parsed, str):  # damaged: counted once, never read again
                self._dead.add(place)
                self._skip(parsed)
            elif parsed[0] == key:  # (else another key with the same code)
                self._index.mark_checked(run, position)
                return parsed[1]
        return None

    def _read_line(self, place: int) -> bytes:
        shard, offset = unpack(place)
        if shard not in self._readers:
            self._readers[shard] = os.open(self._shards[shard], os.O_RDONLY)
        size, line = 1024, b""
        while True:
            line = os.pread(self._readers[shard], size, offset)
            end = line.find(b"\n")
            if end >= 0 or len(line) < size:
                return line[:end] if end >= 0 else line
            size *= 4

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Store results and make them durable before returning."""
        lines, codes, starts, length = [], [], [], 0
        for key, value in items:
            if not isinstance(value, dict):
                raise TypeError(f"cached values must be dicts, got {type(value).__name__}")
            entry = {"key": key, "value": value, "sum": line_checksum(key, value)}
            lines.append((json.dumps(entry, ensure_ascii=True) + "\n").encode("ascii"))
            codes.append(key_code(key))
            starts.append(length)
            length += len(lines[-1])
        if not lines:
            return
        if self._handle is None:
            self._handle = self._shards[self._own].open("ab")
        base = self._handle.tell()
        self._handle.write(b"".join(lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        places = np.asarray(starts, np.uint64) + np.uint64(location(self._own, base))
        with self._lock:
            self._index.add(np.asarray(codes, np.uint64), places, checked=True)

    def close(self) -> None:
        """Close this process's shard and the shards opened for reading (they reopen if read again)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        with self._lock:
            for descriptor in self._readers.values():
                os.close(descriptor)
            self._readers = {}

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
