"""Content-addressed caches of per-pair results, safe against kill -9.

Every computed result is appended, batch by batch, to a JSONL shard owned by the running process
and flushed to disk; a shard's torn last line (a kill mid-write) is ignored on reading. A key is
the hash of everything the result depends on, so a re-run computes only what is new, and a pair
is never counted twice however often a run is interrupted.
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
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


class ResultCache:
    """key -> result dict, persisted as append-only JSONL shards in one folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._results: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        for shard in sorted(self.folder.glob("shard-*.jsonl")):
            self._load(shard)
        self._shard = self.folder / f"shard-{uuid.uuid4().hex[:12]}.jsonl"
        self._handle = None

    def _load(self, shard: Path) -> None:
        with shard.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    self._results[entry["key"]] = entry["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.torn_lines += 1

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
            self._results[key] = value
            lines.append(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
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
