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
    RUN/.batches/<dataset>.json  the provider batches a batch teacher submitted (ids, their requests):
                                 a re-run polls them instead of paying twice
    RUN/.markers/<unit>.json     completion markers: what a finished unit was computed from, and
                                 the digest of each output it wrote
    RUN/.lock                    held by the one `teachfit run` working in this directory

No stage builds a path of a run by hand; a name that comes from user input (a dataset or
student name) is checked by `safe_name` before it becomes a file name, so nothing a user
writes can point outside the run directory.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from teachfit.atomic import write_json_atomic
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
    """sha256 over the names and bytes of files (sorted by path), hex; missing files count as absent.
    An `hf-dataset:` input or a `datasets` folder counts as what it holds (hub_datasets.digest:
    its files' bytes, or a hub dataset's revision)."""
    from teachfit import hub_datasets

    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(str(path.name).encode() + b"\0")
        if hub_datasets.is_hub_spec(path) or hub_datasets.is_saved_dataset(path):
            digest.update(hub_datasets.digest(path).encode())
        elif path.is_file():
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        digest.update(b"\1")
    return digest.hexdigest()[:32]


def fingerprint(*parts: Any) -> str:
    """A short content hash of JSON-able parts (configs, digests)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def settings_of(config: Any) -> dict[str, Any]:
    """A stage config's fields that change results (the progress bar, the price table and the
    prefetch thread do not): what its fingerprint is made of."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(config).items() if k not in ("progress", "prices", "prefetch")}


class RunDir:
    """Every path of one run, its manifest, completion markers and cache."""

    CHECKPOINT_METADATA = "teachfit_train.json"  # written last into a checkpoint: it is finished

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @classmethod
    def among(cls, paths: Sequence[str]) -> "RunDir | None":
        """The run directory among a command line's positional paths: the first folder, if any."""
        folders = [Path(p) for p in paths if Path(p).is_dir()]
        return cls(folders[0]) if folders else None

    def own(self, path: Path) -> Path:
        """`path` when writing there stays inside the run directory; an InputError when the path, or
        a folder on the way to it, is a symbolic link that leads out of it (a write would land there)."""
        root = self.root.resolve()
        for part in (path.parent, path):
            if (part.is_symlink() or part.exists()) and not part.resolve().is_relative_to(root):
                raise InputError(part, None, f"is a link that leads out of the run directory {self.root} "
                                             f"(to {part.resolve()}); teachfit writes only inside it: remove the link")
        return path

    # ---- stage outputs -------------------------------------------------------------------
    @property
    def responses_dir(self) -> Path:
        return self.root / "responses"

    def responses(self, dataset: str) -> Path:
        """RUN/responses/<dataset>.jsonl."""
        return self.own(self.responses_dir / f"{safe_name(dataset, 'dataset name')}.jsonl")

    def batch_state(self, dataset: str) -> Path:
        """RUN/.batches/<dataset>.json: the provider batches submitted for a dataset (not a cache:
        they cost money and cannot be rebuilt)."""
        return self.own(self.root / ".batches" / f"{safe_name(dataset, 'dataset name')}.json")

    def response_files(self) -> list[Path]:
        """Every dataset of the run (responses/*.jsonl), sorted."""
        return sorted(self.responses_dir.glob("*.jsonl")) if self.responses_dir.is_dir() else []

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    def scores(self, student: str) -> Path:
        """RUN/scores/<student>.parquet."""
        return self.own(self.scores_dir / f"{safe_name(student, 'student name')}.parquet")

    def score_files(self) -> list[Path]:
        """Every student's scores, sorted."""
        return sorted(self.scores_dir.glob("*.parquet")) if self.scores_dir.is_dir() else []

    @property
    def selections_dir(self) -> Path:
        return self.root / "selections"

    def selection(self, name: str) -> Path:
        """RUN/selections/<name>.jsonl."""
        return self.own(self.selections_dir / f"{safe_name(name, 'selection name')}.jsonl")

    def selection_files(self) -> list[Path]:
        """Every selection of the run, sorted."""
        return sorted(self.selections_dir.glob("*.jsonl")) if self.selections_dir.is_dir() else []

    @property
    def ranking_csv(self) -> Path:
        return self.own(self.root / "ranking.csv")

    @property
    def ranking_json(self) -> Path:
        return self.own(self.root / "ranking.json")

    def checkpoint(self, student: str, dataset: str) -> Path:
        """RUN/checkpoints/<student>--<dataset>/."""
        return self.own(self.root / "checkpoints" / f"{safe_name(student, 'student name')}--{safe_name(dataset, 'dataset name')}")

    def checkpoints(self) -> list[Path]:
        """Finished checkpoints (those with teachfit_train.json), sorted."""
        folder = self.root / "checkpoints"
        return sorted(p for p in folder.iterdir() if (p / self.CHECKPOINT_METADATA).exists()) if folder.is_dir() else []

    @property
    def evaluations_dir(self) -> Path:
        return self.root / "evaluations"

    @property
    def results_csv(self) -> Path:
        return self.own(self.root / "results.csv")

    @property
    def correlation_csv(self) -> Path:
        return self.own(self.root / "correlation.csv")

    @property
    def report_html(self) -> Path:
        return self.own(self.root / "report.html")

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

    def _marker(self, unit: str) -> Path:
        return self.root / ".markers" / f"{safe_name(unit, 'unit name')}.json"

    def _read_marker(self, unit: str) -> dict[str, Any]:
        """The marker's data; {} when it is missing, torn, or not a JSON object (never trusted then)."""
        try:
            data = json.loads(self._marker(unit).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def why_not_done(self, unit: str, key: str, outputs: Sequence[Any] = ()) -> str | None:
        """None when `unit` finished from inputs and settings whose fingerprint is `key` and every
        output still holds what the unit wrote; else why it must run (in words)."""
        from teachfit.stage import output_digest, output_name

        marker = self._read_marker(unit)
        if not marker:
            return "never finished"
        if marker.get("key") != key:
            return "its settings or inputs changed"
        recorded = marker.get("outputs")
        if not isinstance(recorded, dict):
            return "its marker records no outputs"
        for output in outputs:
            name = output_name(output, self.root)
            digest = output_digest(output)
            if digest is None:
                return f"{name} is missing"
            if recorded.get(name) != digest:
                return f"{name} changed since it was written"
        return None

    def is_done(self, unit: str, key: str, outputs: Sequence[Any] = ()) -> bool:
        """True when `unit` is done (see why_not_done)."""
        return self.why_not_done(unit, key, outputs) is None

    def mark_done(self, unit: str, key: str, stats: dict[str, Any], outputs: Sequence[Any] = ()) -> None:
        """Record that `unit` finished, with the digest of each output as it is now (atomic: a kill
        leaves the old marker or the new one)."""
        from teachfit.stage import output_digest, output_name

        digests = {output_name(o, self.root): output_digest(o) for o in outputs}
        write_json_atomic(self._marker(unit), {"key": key, "outputs": digests, "stats": stats})

    def done_stats(self, unit: str) -> dict[str, Any]:
        """The stats recorded when `unit` last finished ({} if never)."""
        stats = self._read_marker(unit).get("stats", {})
        return stats if isinstance(stats, dict) else {}

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold RUN/.lock while a study runs here: a second `teachfit run` on this directory stops
        with one line naming the holder. The operating system releases the lock when its process
        dies, so a lock left by a killed run is taken over without a word."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        handle = path.open("a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise InputError(self.root, None, f"another teachfit run is working in this run directory ({holder}); "
                                                  "wait for it to finish or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            yield
        finally:
            handle.close()

    def shard_marker(self, stage: str, key: str, rank: int, world: int) -> Path:
        """RUN/.markers/<stage>/<key>-<rank>-of-<world>.done: one executor shard finished."""
        return self.root / ".markers" / safe_name(stage, "stage") / f"{key[:16]}-{rank:05d}-of-{world:05d}.done"
