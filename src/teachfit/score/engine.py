"""The scoring engine: pairs stream through in windows of `config.window` pairs; each scorer's
results are cached by content hash (pair, the scorer's key material), so an interrupted or
repeated run computes only what is missing; one Parquet row of metrics per pair comes out.

Columns: loss / PPL / IFD / RSR under the student (`_self`) and the reference model (`_ref`),
the reward, the cl100k length, token counts and truncation (teachfit.score.lm, .reward).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from teachfit.atomic import atomic_write
from teachfit.config import ScoreConfig
from teachfit.prefetch import in_background
from teachfit.files import count_records, expand_inputs, read_pairs
from teachfit.hub_datasets import absolute
from teachfit.records import InputError, Pair, ReadStats, pair_instruction, split_location
from teachfit.score.base import Scorer, is_cached
from teachfit.score.lm import pair_progress
from teachfit.store import ResultCache, content_hash, content_hashes


# Rows per row group of the scores' Parquet file: a writer keeps each group's metadata until it
# closes, so one group per window (512 rows) grew its memory with the pairs (4,000 groups at 2M).
ROW_GROUP_ROWS = 65536


def _windows(pairs: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    window: list[Pair] = []
    for pair in pairs:
        window.append(pair)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _keys(window: list[Pair], material: dict[str, Any]) -> list[str]:
    """content_hash(material, instruction, response) of each pair: what its cached result is filed under."""
    return content_hashes(material, ((p.instruction, p.response) for p in window))


@dataclass
class _Ready:
    """A window read, keyed and looked up in the cache (in the background); its missing pairs
    prepared (tokenized) when the scorer prepares, or the InputError its preparation raised."""

    window: list[Pair]
    keys: list[str]
    missing: list[int]
    prepared: Any = None
    error: InputError | None = None


def _ready_windows(pairs: Iterable[Pair], scorer: Scorer, cache: ResultCache, size: int) -> Iterator[_Ready]:
    """The windows of `pairs`, each with what can be done before its forward pass (run by
    teachfit.prefetch.in_background while the previous window computes)."""
    material, prepare = scorer.key_material(), getattr(scorer, "prepare", None)
    for window in _windows(pairs, size):
        keys = _keys(window, material)
        ready = _Ready(window, keys, [i for i, value in enumerate(cache.get_many(keys)) if value is None])
        if ready.missing and prepare is not None:
            try:
                ready.prepared = prepare([window[i] for i in ready.missing])
            except InputError as error:
                ready.error = error
        yield ready


def _score_window(ready: _Ready, scorer: Scorer, cache: ResultCache, skip_invalid: bool,
                  skipped: list[dict[str, Any]], progress: Any = None) -> int:
    """Compute and cache the results of a window that `cache` does not hold yet; returns how many
    pairs were computed (not found in the cache).

    The window's missing pairs are one computation, so the forward pass packs them into batches
    that fill the token budget (teachfit.forward.plan_batches); the bar moves per batch (an LM
    scorer reports pairs done through teachfit.score.lm.pair_progress; any other scorer's pairs
    count when its computation returns). Results are cached, durably, once per window: a kill
    loses at most one window's work."""
    window, missing = ready.window, ready.missing
    if progress is not None:
        progress.update(len(window) - len(missing))
    if not missing:
        return 0
    reported = 0

    def advance(pairs: int) -> None:  # per batch; never past the window's missing pairs
        nonlocal reported
        step = min(pairs, len(missing) - reported)
        if step > 0 and progress is not None:
            reported += step
            progress.update(step)

    chosen = [window[i] for i in missing]
    with pair_progress(advance):
        try:
            if ready.error is not None:
                raise ready.error
            values = scorer.compute_prepared(chosen, ready.prepared) if hasattr(scorer, "prepare") else scorer.compute(chosen)
        except InputError:
            if not skip_invalid:
                raise
            values = _one_by_one(scorer, chosen, skipped)
    cache.put_many((ready.keys[i], v) for i, v in zip(missing, values) if v is not None)
    advance(len(missing))  # what the scorer did not report
    return len(missing)


def _one_by_one(scorer: Scorer, pairs: list[Pair], skipped: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Each pair computed alone, to find the one(s) the scorer refuses (InputError): those are
    None, and a row of `skipped` names their file:line."""
    values: list[dict[str, Any] | None] = []
    for pair in pairs:
        try:
            values.append(scorer.compute([pair])[0])
        except InputError as error:
            path, line = split_location(pair.source or error.path)
            skipped.append(InputError(path, line, error.reason).as_row() if line is not None else error.as_row())
            values.append(None)
    return values


def _read_now(scorer: Scorer, window: list[Pair], skip_invalid: bool, skipped: list[dict[str, Any]],
              progress: Any = None) -> list[dict[str, Any] | None]:
    """A scorer's results for a window, computed as the rows are assembled (a scorer whose
    `cached` is False: it reads a value the pairs carry, cheaper than a cache line)."""
    try:
        values: list[dict[str, Any] | None] = list(scorer.compute(window))
    except InputError:
        if not skip_invalid:
            raise
        values = _one_by_one(scorer, window, skipped)
    if progress is not None:
        progress.update(len(window))
    return values


def _cached_windows(pairs: Iterable[Pair], scorers: Sequence[Scorer], caches: list[ResultCache],
                    size: int) -> Iterator[tuple[list[Pair], list[list[dict[str, Any] | None]]]]:
    """Each window of `pairs` with every scorer's cached results for it (None: not there)."""
    materials = [s.key_material() for s in scorers]
    for window in _windows(pairs, size):
        yield window, [cache.get_many(_keys(window, m)) for m, cache in zip(materials, caches)]


def score_pairs(
    pairs: Callable[[], Iterable[Pair]] | Iterable[Pair], scorers: Sequence[Scorer], cache_root: str | Path,
    config: ScoreConfig, progress: Any = None, skipped: list[dict[str, Any]] | None = None,
    computed: list[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one metrics row per pair, in input order; results come from the cache when present
    and are written to it as soon as they are computed. `progress` counts (pair, scorer) steps.

    One model at a time: each scorer runs over all pairs, then its model is released (and the
    accelerator's cached memory with it) before the next scorer loads, so a vLLM student at 0.9
    of the GPU's memory never shares it with a reference or a reward model. The rows are then
    assembled from the caches. `pairs` is a function returning a fresh iterable of the pairs
    (read once per scorer and once more: memory stays flat), or a sequence. `computed` receives
    each cached scorer's number of pairs computed (the others came from the cache; with no cached
    scorer, the pairs assembled).

    A background thread reads, hashes, looks up and tokenizes the next window while this one's
    forward pass runs (teachfit.prefetch: one window ahead), unless `config.prefetch` is off. A
    scorer whose `cached` is False (a reward read from the input file) has no pass and no cache
    of its own: it is computed as the rows are assembled."""
    source = pairs if callable(pairs) else (lambda items=list(pairs): items)
    ahead = in_background if config.prefetch else iter  # (in_background looked up now: bench/scale.py times it)
    skipped = skipped if skipped is not None else []
    kept = [s for s in scorers if is_cached(s)]
    caches = [ResultCache(Path(cache_root) / content_hash(s.key_material())[:16]) for s in kept]
    try:
        for number, (scorer, cache) in enumerate(zip(kept, caches)):
            done, pairs_seen = 0, 0
            with contextlib.closing(ahead(_ready_windows(source(), scorer, cache, config.window))) as ready_windows:
                for ready in ready_windows:
                    done += _score_window(ready, scorer, cache, config.skip_invalid, skipped, progress)
                    pairs_seen += len(ready.window)
            if number == 0 and progress is not None:  # now the pairs are counted: the bar's total is exact
                progress.total = pairs_seen * len(scorers)
                progress.refresh()
            getattr(scorer, "release", lambda: None)()
            if computed is not None:
                computed.append(done)
        assembled = 0
        with contextlib.closing(ahead(_cached_windows(source(), kept, caches, config.window))) as windows:
            for window, from_cache in windows:
                cached_results = iter(from_cache)  # the columns in the scorers' order:
                per_scorer = [next(cached_results) if is_cached(scorer)
                              else _read_now(scorer, window, config.skip_invalid, skipped, progress) for scorer in scorers]
                assembled += len(window)
                for i, pair in enumerate(window):
                    parts = [results[i] for results in per_scorer]
                    if any(part is None for part in parts):
                        continue
                    row: dict[str, Any] = {"id": pair.id, "teacher": pair.teacher}
                    for part in parts:
                        row.update(part)
                    yield row
        if not kept:  # no scorer has a cache: every pair was computed as it was assembled
            if computed is not None:
                computed.append(assembled)
            if progress is not None:
                progress.total = assembled * len(scorers)
                progress.refresh()
    finally:
        for cache in caches:
            cache.close()


def _several_pairs_per_row(path: Path) -> bool:
    """Whether a file's first record holds several teachers' answers (a Zoo or UltraFeedback row)."""
    from teachfit.files import iter_raw_records
    from teachfit.records import expand_wide_record

    try:
        first = next((record for _, record in iter_raw_records(path) if isinstance(record, dict)), None)
    except InputError:
        return False
    return first is not None and expand_wide_record(first) is not None


def sampled_instructions(paths: Sequence[Path], n: int, seed: int) -> set[str]:
    """The same n instructions for every teacher: those whose seeded hash is smallest, so a larger
    n later contains a smaller one (and the cache makes extending the sample compute only the new)."""
    keys = {pair_instruction(p) for p in read_pairs(paths, skip_invalid=True)}
    return set(sorted(keys, key=lambda key: content_hash(seed, key))[:n])


def score_files(
    inputs: Sequence[str | Path], out: str | Path, student: str, config: ScoreConfig | None = None,
    cache_dir: str | Path | None = None, scorers: Sequence[Scorer] | None = None,
) -> dict[str, Any]:
    """Score every pair of the input files (or run directories) into one Parquet file at `out`,
    with the scorers `config` asks for (teachfit.score.scorers.build_scorers) unless `scorers` are
    given; results cached under `cache_dir` (default: .teachfit_cache/scores beside `out`).

    Returns the metadata written with it: models, options, versions, counts and skipped rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from teachfit.score.scorers import build_scorers
    from teachfit.versions import versions

    config = config or ScoreConfig()
    out = Path(out)
    paths = expand_inputs(inputs)
    cache_dir = Path(cache_dir) if cache_dir else out.parent / ".teachfit_cache" / "scores"
    started = time.perf_counter()
    scorers = list(scorers) if scorers is not None else build_scorers(student, config, paths)
    stats, skipped = ReadStats(), []
    chosen = sampled_instructions(paths, config.sample, config.seed) if config.sample else None

    def pairs() -> Iterator[Pair]:  # read again for each scorer: the last reading's counts are the ones reported
        nonlocal stats
        stats = ReadStats()
        read = read_pairs(paths, skip_invalid=config.skip_invalid, stats=stats, reward_column=config.reward_column)
        return (p for p in read if chosen is None or pair_instruction(p) in chosen)

    # rows are pairs, unless a file holds several teachers' answers per row (Zoo, UltraFeedback):
    # then the total is known after the first scorer's pass (score_pairs sets it)
    total = None if any(_several_pairs_per_row(p) for p in paths) else count_records(paths)
    if config.sample and total is not None:
        total = min(total, config.sample * len(paths))  # for the progress bar (one teacher per file)
    writer, rows_written, truncated, computed = None, 0, 0, []
    with atomic_write(out, "wb") as handle:
        with tqdm(total=total * len(scorers) if total is not None else None, unit="step",
                  desc=f"score ({len(scorers)} scorers x pairs)",
                  disable=not config.progress) as bar:
            pending: list[Any] = []  # tables of rows not written yet: one row group per ROW_GROUP_ROWS rows
            for batch in _windows(score_pairs(pairs, scorers, cache_dir, config, bar, skipped, computed), config.window):
                table = pa.Table.from_pylist(batch)
                if writer is None:
                    writer = pq.ParquetWriter(handle, table.schema)
                pending.append(table.cast(writer.schema))
                rows_written += len(batch)
                truncated += sum(bool(r.get("truncated")) for r in batch)
                if sum(len(t) for t in pending) >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
            if pending:
                writer.write_table(pa.concat_tables(pending))
        if writer is None:
            raise InputError(paths[0] if paths else out, None, "no valid pairs to score")
        metadata = {
            "stage": "score", "inputs": [absolute(p) for p in paths], "options": asdict(config),
            "scorers": [s.describe() for s in scorers], "versions": versions(),
            "counts": {"read": stats.read, "scored": rows_written, "truncated": truncated,
                       "skipped": len(stats.skipped) + len(skipped), **stats.counts,
                       # pairs some scorer computed (the most any one computed; the rest came from the cache)
                       "computed": max(computed, default=0), "cached": max(0, rows_written - max(computed, default=0))},
            "skipped": stats.skipped + skipped, "seconds": round(time.perf_counter() - started, 3),
        }
        writer.add_key_value_metadata({"teachfit": json.dumps(metadata)})
        writer.close()
    return metadata
