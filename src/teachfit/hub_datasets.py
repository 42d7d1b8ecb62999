"""Datasets read through the `datasets` library (the extra [datasets]): the one spelling
`hf-dataset:<hub id or local path>[:split]` (default split "train"), parsed here, and `datasets`
save_to_disk folders named by their path.

  hf-dataset:Magpie-Align/Magpie-100K-Generator-Zoo        a hub dataset, streamed (streaming=True)
  hf-dataset:/data/zoo:test                                a save_to_disk folder (load_from_disk), split test
  hf-dataset:./answers.jsonl                               a local JSONL/JSON/Parquet file (data_files)

Every reader yields (row number from 1, record) as files.iter_raw_records does, an Arrow record
batch at a time (BATCH_ROWS rows), so memory stays flat however many rows the dataset has
(load_from_disk is memory-mapped). A hub id offline is one InputError naming the id.
`digest` is what the pipeline hashes for an input that is no single file: the bytes of a local
dataset's files, or a hub dataset's revision (the commit sha `datasets` resolves: its builder's hash).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from teachfit.records import InputError

PREFIX = "hf-dataset:"
DEFAULT_SPLIT = "train"
BATCH_ROWS = 1024  # rows per Arrow record batch turned into Python records at a time
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_HUB_ID = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def is_hub_spec(item: str | os.PathLike) -> bool:
    """Whether an input is spelled `hf-dataset:...` (read through `datasets`, not as a file)."""
    return str(item).startswith(PREFIX)


@dataclass(frozen=True)
class DatasetSpec:
    """One `hf-dataset:` input as written (`text`): `source` is a hub id or an absolute local path,
    `split` as written (None: the default)."""

    text: str
    source: str
    split: str | None
    local: bool

    @property
    def name(self) -> str:
        """The dataset's own name (a file's stem, a hub id's last part): the default teacher of its rows."""
        return Path(self.source).stem if self.local else self.source.rsplit("/", 1)[-1]

    @property
    def spelled(self) -> str:
        """The spelling that names the same rows from any folder (a local path absolute)."""
        return PREFIX + self.source + (f":{self.split}" if self.split else "")


def parse(item: str | os.PathLike, base: Path | None = None) -> DatasetSpec:
    """`hf-dataset:<id or path>[:split]` -> DatasetSpec. A source that starts like a path (/, ./,
    ../, ~) or exists under `base` (default: the working directory) is local, anything else a hub
    id; InputError for a missing local path or something that is neither."""
    text, base = str(item), base or Path.cwd()
    body = text[len(PREFIX):]
    source, split = body, None
    head, colon, tail = body.rpartition(":")
    if colon and head and _SPLIT_NAME.fullmatch(tail) and not (base / Path(body).expanduser()).exists():
        source, split = head, tail
    if not source:
        raise InputError(text, None, f"no dataset named: write {PREFIX}<owner/name or path>[:split]")
    path = base / Path(source).expanduser()
    local = source.startswith(("/", "./", "../", "~")) or path.exists()
    if local and not path.exists():
        raise InputError(text, None, f"file not found: {path}")
    if not local and not _HUB_ID.fullmatch(source):
        raise InputError(text, None, f"'{source}' is neither a local path nor a hub dataset id (owner/name)")
    return DatasetSpec(text=text, source=str(path.resolve()) if local else source, split=split, local=local)


def absolute(item: str | os.PathLike, base: Path | None = None) -> str:
    """An input's name for metadata and study files, the same from any folder: a local path (or a
    spec's local path) made absolute against `base` (default: the working directory)."""
    if is_hub_spec(item):
        return parse(item, base).spelled
    return str(((base or Path.cwd()) / Path(item).expanduser()).resolve())


def default_teacher(path: str | os.PathLike) -> str:
    """The default teacher of an input's rows: a spec's dataset name, else the file's stem."""
    return parse(path).name if is_hub_spec(path) else Path(path).stem


# ---- opening: one place that calls `datasets` ------------------------------------------------
def _datasets() -> Any:
    from teachfit.env import require

    return require("datasets", "datasets")


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No `datasets` progress bars while opening (teachfit draws its own); restored after."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _reason(error: BaseException) -> str:
    """An exception as one short line (its first line, with any HF_TOKEN value taken out)."""
    text = (str(error).strip().splitlines() or [""])[0][:200]
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return f"{type(error).__name__}: {text.replace(token, '***') if token else text}"


def _load_failed(spec: DatasetSpec, error: Exception) -> InputError:
    """What went wrong opening a dataset, as one InputError about the spec."""
    from datasets.exceptions import DatasetNotFoundError

    split = spec.split or DEFAULT_SPLIT
    if isinstance(error, ValueError) and str(error).startswith(("Bad split", "Unknown split")):
        available = str(error).partition("Available splits:")[2].strip().strip("[]").replace("'", "")
        return InputError(spec.text, None, f"no split '{split}' (splits: {available or 'see the dataset card'})")
    if not spec.local and isinstance(error, DatasetNotFoundError):
        return InputError(spec.text, None, f"no dataset '{spec.source}' on the Hugging Face hub "
                                           "(a private or gated one needs HF_TOKEN in the environment)")
    if not spec.local and isinstance(error, (ConnectionError, OSError)):
        offline = any(os.environ.get(name, "0") not in ("", "0", "false", "False")
                      for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        why = "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if offline else _reason(error)
        return InputError(spec.text, None, f"the Hugging Face hub could not be reached ({why})")
    return InputError(spec.text, None, f"could not be opened with `datasets` ({_reason(error)})")


def open_split(spec: DatasetSpec) -> Any:
    """The rows a spec names: a memory-mapped `datasets.Dataset` (a save_to_disk folder) or a
    streaming `datasets.IterableDataset` (a hub id, a local file or data folder)."""
    datasets = _datasets()
    path = Path(spec.source)
    try:
        with _quiet(datasets):
            if spec.local and is_saved_dataset(path):
                return _saved_split(datasets.load_from_disk(str(path)), spec)
            if spec.local and path.is_file():
                builder = _BUILDERS.get(path.suffix)
                if builder is None:
                    raise InputError(spec.text, None, f"unknown format '{path.suffix}': use "
                                                      f"{', '.join(_BUILDERS)} or a dataset folder")
                return datasets.load_dataset(builder, data_files=str(path), split=spec.split or DEFAULT_SPLIT,
                                             streaming=True)
            return datasets.load_dataset(str(path) if spec.local else spec.source,
                                         split=spec.split or DEFAULT_SPLIT, streaming=True)
    except InputError:
        raise
    except Exception as error:  # datasets raises many kinds; each is one line about this input
        raise _load_failed(spec, error) from None


def _saved_split(loaded: Any, spec: DatasetSpec) -> Any:
    """One split of a load_from_disk result (a DatasetDict's split, or the Dataset itself when it
    has no split of another name)."""
    if hasattr(loaded, "keys"):  # a DatasetDict
        split = spec.split or DEFAULT_SPLIT
        if split not in loaded:
            raise InputError(spec.text, None, f"no split '{split}' (splits: {', '.join(loaded)})")
        return loaded[split]
    if spec.split and loaded.split is not None and str(loaded.split) != spec.split:
        raise InputError(spec.text, None, f"no split '{spec.split}': this folder holds the split '{loaded.split}'")
    return loaded


def _rows(dataset: Any, where: str) -> Iterator[tuple[int, Any]]:
    """(row number from 1, record) of a Dataset or IterableDataset, one Arrow batch at a time."""
    row = 0
    try:
        for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
            for record in table.to_pylist():
                row += 1
                yield row, record
    except InputError:
        raise
    except Exception as error:  # a bad file or a dropped connection, after `row` good rows
        raise InputError(where, None, f"could not be read after row {row} ({_reason(error)})") from None


# ---- what files.py calls -------------------------------------------------------------------------
def spec_records(item: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(row number from 1, record) of an `hf-dataset:` input, streamed."""
    spec = parse(item)
    yield from _rows(open_split(spec), spec.text)


def checked(item: str | os.PathLike) -> str:
    """An `hf-dataset:` input opened once now (an unreachable hub, a missing split or file is
    reported before any model loads), spelled with its local path made absolute."""
    spec = parse(item)
    open_split(spec)
    return spec.spelled


def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` is a `datasets` save_to_disk folder (a Dataset or a DatasetDict)."""
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def saved_dataset_parts(folder: Path) -> list[Path]:
    """The Dataset folders of a save_to_disk folder: itself, or each split of a DatasetDict."""
    if not (folder / "dataset_dict.json").is_file():
        return [folder]
    datasets = _datasets()
    with _quiet(datasets):
        return [folder / split for split in datasets.load_from_disk(str(folder))]


def saved_records(folder: Path) -> Iterator[tuple[int, Any]]:
    """(row number from 1, record) of one save_to_disk Dataset folder, through load_from_disk."""
    datasets = _datasets()
    try:
        with _quiet(datasets):
            loaded = datasets.load_from_disk(str(folder))
    except Exception as error:
        raise InputError(folder, None, f"not a readable `datasets` folder ({_reason(error)})") from None
    yield from _rows(loaded, str(folder))


def count_rows(item: str | os.PathLike) -> int:
    """Rows of a save_to_disk folder or an `hf-dataset:` input, for progress bars: exact for a
    folder on disk, the dataset card's count for a streamed one (0 when it has none)."""
    if not is_hub_spec(item):
        datasets = _datasets()
        with _quiet(datasets):
            loaded = datasets.load_from_disk(str(item))
        # a DatasetDict (a dict of splits): the rows of every split, not the number of splits
        return sum(map(len, loaded.values())) if isinstance(loaded, dict) else len(loaded)
    spec = parse(item)
    dataset = open_split(spec)
    if hasattr(dataset, "__len__"):
        return len(dataset)
    splits = dataset.info.splits or {}
    found = splits.get(spec.split or DEFAULT_SPLIT)
    return int(found.num_examples or 0) if found is not None else 0


def digest(item: str | os.PathLike) -> str:
    """What an input holds now, for the pipeline's input hash: the bytes of a local dataset's
    files (every file of a folder, by relative name), or a hub dataset's revision (the commit sha
    of the hub repository now, which `datasets` gives its builder as `hash`; offline: InputError)."""
    from teachfit.env import sha256_file

    spec = parse(item) if is_hub_spec(item) else DatasetSpec(str(item), str(item), None, True)
    hasher = hashlib.sha256(f"{spec.split or DEFAULT_SPLIT}\0".encode())
    if spec.local:
        root = Path(spec.source)
        files: Iterable[Path] = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            hasher.update(str(file.relative_to(root) if root.is_dir() else file.name).encode() + b"\0")
            hasher.update(sha256_file(file).encode())
        return hasher.hexdigest()[:32]
    datasets = _datasets()
    try:
        with _quiet(datasets):
            builder = datasets.load_dataset_builder(spec.source)
    except Exception as error:
        raise _load_failed(spec, error) from None
    hasher.update(str(builder.hash).encode())
    return hasher.hexdigest()[:32]
