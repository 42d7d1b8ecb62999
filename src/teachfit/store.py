"""Content-addressed caches of per-pair results, safe against kill -9.

Every computed result is appended, batch by batch, to a JSONL shard owned by the running process
and flushed to disk; a shard's torn last line (a kill mid-write) is ignored on reading. A key is
the hash of everything the result depends on, so a re-run computes only what is new, and a pair
is never counted twice however often a run is interrupted.

Each line is {"key", "value", "sum"}, `sum` a short sha256 of the canonical JSON of key and value.
A line that is not UTF-8, not a JSON object, lacks a field, holds a value that is not an object
or fails its checksum (a flipped digit, an older format) is skipped and counted, and its result
is computed again: a damaged cache costs time, never a wrong number or a crash.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable


def content_hash(*parts: Any) -> str:
    """sha256 (hex, 32 digits) of the JSON encoding of `parts`."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:32]


def line_checksum(key: str, value: dict[str, Any]) -> str:
    """The `sum` field of a cache line: sha256 (16 hex digits) of canonical JSON of [key, value]."""
    blob = json.dumps([key, value], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:16]


def parse_line(raw: bytes) -> tuple[str, dict[str, Any]] | str:
    """(key, value) of one shard line, or the reason it cannot be used."""
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
    if line_checksum(key, value) != checksum:
        return "checksum"
    return key, value


class ResultCache:
    """key -> result dict, persisted as append-only JSONL shards in one folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._results: dict[str, dict[str, Any]] = {}
        self.skipped_lines: dict[str, int] = {}  # reason -> lines skipped (their results are recomputed)
        for shard in sorted(self.folder.glob("shard-*.jsonl")):
            self._load(shard)
        self._shard = self.folder / f"shard-{uuid.uuid4().hex[:12]}.jsonl"
        self._handle = None

    @property
    def torn_lines(self) -> int:
        """Lines skipped on loading, whatever the reason."""
        return sum(self.skipped_lines.values())

    def _load(self, shard: Path) -> None:
        with shard.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                parsed = parse_line(raw)
                if isinstance(parsed, str):
                    self.skipped_lines[parsed] = self.skipped_lines.get(parsed, 0) + 1
                else:
                    self._results[parsed[0]] = parsed[1]

    def __contains__(self, key: str) -> bool:
        return key in self._results

    def __len__(self) -> int:
        return len(self._results)

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached result for `key`, or None."""
        return self._results.get(key)

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Store results and make them durable before returning."""
        lines = []
        for key, value in items:
            if not isinstance(value, dict):
                raise TypeError(f"cached values must be dicts, got {type(value).__name__}")
            self._results[key] = value
            entry = {"key": key, "value": value, "sum": line_checksum(key, value)}
            lines.append(json.dumps(entry, ensure_ascii=True) + "\n")
        if not lines:
            return
        if self._handle is None:
            self._handle = self._shard.open("a", encoding="utf-8")
        self._handle.write("".join(lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close this process's shard."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
