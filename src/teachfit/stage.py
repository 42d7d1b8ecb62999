"""What a stage is, declared once: the `Stage` record, its `Unit`s of work, and the study's `Plan`.

Each stage's module declares one `Stage` (name, config class, the function that runs it, how a
study splits it into units, its summary line); `teachfit.stages.STAGES` lists them in data-flow
order, and the CLI, the study file and `teachfit run` are made from that list.

A unit (one selection, one checkpoint, one evaluation, ...) is done when the fingerprint of its
settings and input bytes is the one its marker recorded AND every output still has the digest
recorded when the unit wrote it: a missing, edited or damaged output makes the unit run again.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from teachfit.env import sha256_file
from teachfit.records import InputError
from teachfit.yaml_file import line_of

LARGE_FILE = 64 << 20  # bytes; larger files (model weights) are identified by size and mtime, not hashed


@dataclass(frozen=True)
class CsvRows:
    """The rows of a CSV output that one unit owns (e.g. its (model, bench) row of results.csv)."""

    path: Path
    match: tuple[tuple[str, str], ...]  # (column, value) pairs a row must have

    def describe(self) -> str:
        return f"{self.path} ({', '.join(f'{k}={v}' for k, v in self.match)})"


Output = Any  # a Path (file or folder) or CsvRows


def output_digest(output: Output) -> str | None:
    """A digest of what an output holds now; None when it is missing (or has no rows of the unit).

    Files are hashed whole, folders file by file (relative names and bytes; resume copies under
    `checkpoint-*` and hidden files are left out). Files over LARGE_FILE bytes are identified by
    size and modification time, so a 14 GB checkpoint is not re-read at every run."""
    if isinstance(output, CsvRows):
        return _rows_digest(output)
    path = Path(output)
    if path.is_file():
        return _file_digest(path)
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _skipped(p.relative_to(path)))
        for file in files:
            digest.update(str(file.relative_to(path)).encode() + b"\0" + _file_digest(file).encode())
        return digest.hexdigest()[:32] if files else None
    return None


def _skipped(relative: Path) -> bool:
    return any(part.startswith((".", "checkpoint-")) for part in relative.parts)


def _file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > LARGE_FILE:
        return f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    return sha256_file(path)[:32]


def _rows_digest(output: CsvRows) -> str | None:
    if not output.path.is_file():
        return None
    try:
        with output.path.open(newline="", encoding="utf-8") as handle:
            # empty cells are left out: another unit's row may add columns to the file, not to this row
            rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(handle)
                    if all(r.get(k) == v for k, v in output.match)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows:
        return None
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:32]


def output_name(output: Output, root: Path) -> str:
    """How a marker names an output: its path relative to the run directory."""
    path = output.path if isinstance(output, CsvRows) else Path(output)
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = str(path)
    return name + (f"#{dict(output.match)}" if isinstance(output, CsvRows) else "")


@dataclass
class Unit:
    """One piece of a stage's work in a study, with its own completion marker."""

    name: str                      # the marker's name: `score-gemma3-270m`, `train-s--t`, ...
    config: Any                    # the config the stage's function runs with
    inputs: Sequence[Path] | Callable[[], Sequence[Path]] = ()  # files it reads, digested just before it runs
    outputs: Sequence[Output] = ()  # what it writes; done only while these are as it wrote them
    work: str | Callable[[], str] = "cheap (no model)"  # what running it would compute (--dry-run)


@dataclass(frozen=True)
class Stage:
    """A stage, declared once in its own module."""

    name: str
    config: type                                   # its options: CLI flags, study-file keys, API
    run: Callable[..., Any]                        # (config, RunDir | None, executor) -> stats
    help: str                                      # the command's one-paragraph help
    units: Callable[[Any, "Plan", Any], list[Unit]] | None = None  # (section, plan, run) -> units
    plan: Callable[[Any, "Plan"], None] | None = None  # checks its section against the study, names its outputs
    summary: Callable[[Any], dict[str, Any]] = lambda stats: stats  # what its marker keeps
    line: Callable[[Any], str] = lambda stats: ""  # one line saying what happened
    text: Callable[[Any], str] | None = None       # what its command prints (default: the line)
    failed: Callable[[Any], str | None] = lambda stats: None  # says so when nothing succeeded (exit 3)
    run_dir_of: Callable[[Any], Any] | None = None  # the run directory a command line's config names
    listed: bool = False                           # a study section may be a list of configs
    sharded: bool = False                          # takes an executor (--executor ray)
    needs: tuple[str, ...] = ()                    # stages whose outputs it reads (in a study)


@dataclass
class Plan:
    """Everything a study will produce, named before anything runs: datasets (teachers' and
    selections'), students, checkpoints. Each name remembers where in the study file it came
    from, so two entries that would write one file are refused, naming both."""

    source: Path
    lines: dict[tuple, int]
    raw: dict[str, Any] = field(default_factory=dict)                  # the file's data, as written
    names: dict[str, dict[str, tuple]] = field(default_factory=dict)  # kind -> name -> where
    sections: dict[str, Any] = field(default_factory=dict)             # stage -> config(s)
    given: dict[str, Path] = field(default_factory=dict)               # dataset -> the `responses:` file it copies

    def line(self, where: tuple) -> int | None:
        """The line of `where` in the study file, or of the nearest enclosing key."""
        return line_of(self.lines, where)

    def fail(self, where: tuple, message: str) -> None:
        raise InputError(self.source, self.line(where), message)

    def add(self, kind: str, name: str, where: tuple, what: str) -> None:
        """Record `name` (a dataset, selection, student, ...); a second entry of one name is an
        InputError at its line naming the first."""
        taken = self.names.setdefault(kind, {})
        if name in taken:
            first, first_what = taken[name]
            line = self.line(first)
            self.fail(where, f"{what} makes the {kind} name '{name}', which {first_what}"
                             f"{f' (line {line})' if line else ''} already makes: they would write one file; "
                             "give one of them another name")
        taken[name] = (where, what)

    def of(self, kind: str) -> list[str]:
        """The names of one kind, in the order they were added."""
        return list(self.names.get(kind, {}))
