"""The run directory: the one owner of every path of a run, its manifest, markers and cache.

    RUN/manifest.json            resolved experiment config + package versions (written first)
    RUN/responses/<dataset>.jsonl
    RUN/scores/<student>.parquet
    RUN/selections/<name>.jsonl
    RUN/ranking.csv, ranking.json   one table, a `student` column per row
    RUN/checkpoints/<student>--<dataset>/
    RUN/evaluations/             answers/, judgments/, scores-*.json
    RUN/results.csv, correlation.csv, report.html
    RUN/.cache/<kind>/           the one cache root (content-hash shards)
    RUN/.markers/<stage>.json    completion markers: what a finished stage was computed from

No stage builds a path of a run by hand; a name that comes from user input (a dataset or
student name) is checked by `safe_name` before it becomes a file name, so nothing a user
writes can point outside the run directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from teachfit.records import InputError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def safe_name(name: str, what: str = "name") -> str:
    """`name` when it can be a file name inside the run directory: letters, digits and . _ + -,
    not starting with a dot, no path separators, at most 128 characters; else InputError."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise InputError(what, None, f"'{name}' cannot be used as a {what}: use letters, digits and . _ + - "
                                     "(no path separators, no '..', not starting with a dot)")
    return name


def file_digest(paths: Iterable[Path]) -> str:
    """sha256 over the names and bytes of files (sorted by path), hex; missing files count as absent."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(str(path.name).encode() + b"\0")
        if path.is_file():
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        digest.update(b"\1")
    return digest.hexdigest()[:32]


def fingerprint(*parts: Any) -> str:
    """A short content hash of JSON-able parts (configs, digests)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a unique temporary file, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, default=str))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RunDir:
    """Every path of one run, its manifest, completion markers and cache."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ---- stage outputs -------------------------------------------------------------------
    @property
    def responses_dir(self) -> Path:
        return self.root / "responses"

    def responses(self, dataset: str) -> Path:
        """RUN/responses/<dataset>.jsonl."""
        return self.responses_dir / f"{safe_name(dataset, 'dataset name')}.jsonl"

    def response_files(self) -> list[Path]:
        """Every dataset of the run (responses/*.jsonl), sorted."""
        return sorted(self.responses_dir.glob("*.jsonl")) if self.responses_dir.is_dir() else []

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    def scores(self, student: str) -> Path:
        """RUN/scores/<student>.parquet."""
        return self.scores_dir / f"{safe_name(student, 'student name')}.parquet"

    def score_files(self) -> list[Path]:
        """Every student's scores, sorted."""
        return sorted(self.scores_dir.glob("*.parquet")) if self.scores_dir.is_dir() else []

    @property
    def selections_dir(self) -> Path:
        return self.root / "selections"

    def selection(self, name: str) -> Path:
        """RUN/selections/<name>.jsonl."""
        return self.selections_dir / f"{safe_name(name, 'selection name')}.jsonl"

    @property
    def ranking_csv(self) -> Path:
        return self.root / "ranking.csv"

    @property
    def ranking_json(self) -> Path:
        return self.root / "ranking.json"

    def checkpoint(self, student: str, dataset: str) -> Path:
        """RUN/checkpoints/<student>--<dataset>/."""
        return self.root / "checkpoints" / f"{safe_name(student, 'student name')}--{safe_name(dataset, 'dataset name')}"

    def checkpoints(self) -> list[Path]:
        """Finished checkpoints (those with teachfit_train.json), sorted."""
        folder = self.root / "checkpoints"
        return sorted(p for p in folder.iterdir() if (p / "teachfit_train.json").exists()) if folder.is_dir() else []

    @property
    def evaluations_dir(self) -> Path:
        return self.root / "evaluations"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def correlation_csv(self) -> Path:
        return self.root / "correlation.csv"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # ---- cache, manifest, markers --------------------------------------------------------
    def cache(self, kind: str) -> Path:
        """RUN/.cache/<kind>: the one cache root of the run (scores, judgments, ...)."""
        return self.root / ".cache" / safe_name(kind, "cache kind")

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def write_manifest(self, config: dict[str, Any]) -> None:
        """Record the resolved configuration and package versions before work starts."""
        from teachfit.versions import versions

        write_json_atomic(self.manifest_path, {"config": config, "versions": versions()})

    def _marker(self, stage: str) -> Path:
        return self.root / ".markers" / f"{safe_name(stage, 'stage')}.json"

    def is_done(self, stage: str, key: str) -> bool:
        """True when `stage` finished from inputs and settings whose fingerprint is `key`."""
        marker = self._marker(stage)
        try:
            return json.loads(marker.read_text()).get("key") == key
        except (OSError, ValueError):
            return False

    def mark_done(self, stage: str, key: str, stats: dict[str, Any]) -> None:
        """Record that `stage` finished (atomic: a kill leaves the old marker or the new one)."""
        write_json_atomic(self._marker(stage), {"key": key, "stats": stats})

    def done_stats(self, stage: str) -> dict[str, Any]:
        """The stats recorded when `stage` last finished ({} if never)."""
        try:
            return json.loads(self._marker(stage).read_text()).get("stats", {})
        except (OSError, ValueError):
            return {}

    def shard_marker(self, stage: str, key: str, rank: int, world: int) -> Path:
        """RUN/.markers/<stage>/<key>-<rank>-of-<world>.done: one executor shard finished."""
        return self.root / ".markers" / safe_name(stage, "stage") / f"{key[:16]}-{rank:05d}-of-{world:05d}.done"
