"""Stage `score`: pairs -> one row of metrics per pair (DESIGN section 2).

Columns: loss / PPL / IFD under the student (`_self`) and the reference model (`_ref`), the
reward, the cl100k length, token counts and truncation. Pairs stream through in windows; each
scorer's results are cached by content hash (pair, model, template, options), so an interrupted
or repeated run computes only what is missing.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from teachfit import metrics
from teachfit.forward import BatchPlan, response_nll
from teachfit.records import InputError, Pair
from teachfit.store import ResultCache, content_hash
from teachfit.config import ScoreConfig
from teachfit.template import DEFAULT_TEMPLATE_NAME, encode_pair, encode_response_alone, ensure_chat_template
from teachfit.tokens import token_length

SCORING_VERSION = 2  # bump when a computation changes, so old cache entries are not reused (2: RSR columns)


# The options of scoring are the stage's config (one declaration: teachfit.config.ScoreConfig).
ScoreOptions = ScoreConfig


def lm_key_material(fingerprint: str, dtype: str, max_length: int, unconditional: bool = True) -> dict[str, Any]:
    """Everything a cached LM result depends on, known before the model loads: the weights'
    fingerprint (a local folder's includes its tokenizer files, hence its chat template), the
    dtype the model runs in, teachfit's default template, the length limit, and whether loss(y)
    was computed (results without it are cached apart)."""
    material = {"kind": "lm", "model": fingerprint, "dtype": dtype, "template": DEFAULT_TEMPLATE_NAME,
                "max_length": max_length, "version": SCORING_VERSION}
    return material if unconditional else material | {"unconditional": False}


class LMScorer:
    """loss(y|x), loss(y), PPL, IFD of each pair under one causal LM, columns suffixed `_<role>`."""

    def __init__(self, loaded: Any, role: str, options: ScoreOptions):
        self.loaded, self.role, self.options = loaded, role, options
        self.template_name = ensure_chat_template(loaded.tokenizer)
        self.tokens_done = 0

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on."""
        return lm_key_material(self.loaded.spec.fingerprint(), self.loaded.dtype, self.options.max_length,
                               self.options.unconditional_for(self.role))

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records."""
        return {"role": self.role, "model": self.loaded.describe(), "template": self.template_name,
                "effective_max_length": self.max_length}

    @property
    def max_length(self) -> int:
        """--max-length, clamped to the model's positions (GPT-2: 1024) so long pairs are truncated, not fatal."""
        return self.loaded.clamp_length(self.options.max_length)

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """Per-pair losses (nats per response token) and the metrics derived from them."""
        encoded = encode_pairs(self.loaded.tokenizer, pairs, self.max_length, self.options.unconditional_for(self.role))
        nll = response_nll(self.loaded.model, self.loaded.tokenizer, encoded, self.options.plan,
                           self.loaded.device, on_batch=self._count, ranks=True)
        return rows_from_nll(nll, [e.truncated for e in encoded[: len(pairs)]], self.role)

    def _count(self, tokens: int) -> None:
        self.tokens_done += tokens


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], max_length: int, unconditional: bool) -> list[Any]:
    """Each pair rendered by teachfit's template (template.encode_pair), then, when `unconditional`
    (loss(y): only IFD needs it, CAR does not), each response alone, in the same order. A prompt
    that leaves no room for the response is an InputError naming the pair."""
    conditional = []
    for pair in pairs:
        try:
            conditional.append(encode_pair(tokenizer, pair.instruction, pair.response, max_length))
        except ValueError as error:
            raise InputError(pair.source or pair.id, None, f"{error} (pair {pair.id})") from None
    alone = [encode_response_alone(tokenizer, pair.response, max_length) for pair in pairs] if unconditional else []
    return conditional + alone


def rows_from_nll(nll: Sequence[tuple[float, int, float]], truncated: Sequence[bool], role: str) -> list[dict[str, Any]]:
    """Metric rows of n pairs from (sum of -log p in nats, response tokens, sum of clipped ranks)
    per sequence: the first n are loss(y|x), any n more loss(y) in the same order (what every LM
    scorer computes: in-process, served, vLLM). A rank sum that is not finite (a server that
    reports no ranks) leaves RSR out."""
    n, suffix = len(truncated), "" if role == "self" else f"_{role}"
    rows = []
    for i in range(n):
        sum_c, n_c, ranks_c = nll[i]
        sum_u, n_u, _ = nll[n + i] if len(nll) > n else (math.nan, 0, 0)
        rank = ranks_c / n_c if math.isfinite(ranks_c) else None
        metrics = lm_metrics(sum_c / n_c, sum_u / n_u if n_u else math.nan, role, rank)
        if len(nll) == n:  # loss(y) not asked for: its columns are left out, not filled with NaN
            metrics = {k: v for k, v in metrics.items() if k not in (f"loss_{role}_uncond", f"ifd_{role}", f"ifd_loss_ratio_{role}")}
        rows.append(metrics | {f"n_response_tokens{suffix}": n_c, f"truncated{suffix}": truncated[i]})
    return rows


def lm_metrics(loss_conditional: float, loss_unconditional: float, role: str,
               mean_rank: float | None = None) -> dict[str, float]:
    """loss, loss_uncond, ppl, ifd, ifd_loss_ratio for one pair, suffixed `_<role>`; with the
    response tokens' mean clipped rank, also mean_rank and RSR = mean rank / loss(y|x)."""
    has_uncond = not math.isnan(loss_unconditional)
    ranked = {} if mean_rank is None else {f"mean_rank_{role}": mean_rank,
                                           f"rsr_{role}": metrics.rsr(mean_rank, loss_conditional)}
    return {
        f"loss_{role}": loss_conditional,
        f"loss_{role}_uncond": loss_unconditional,
        f"ppl_{role}": metrics.ppl(loss_conditional),
        f"ifd_{role}": metrics.ifd(loss_conditional, loss_unconditional) if has_uncond else math.nan,
        f"ifd_loss_ratio_{role}": metrics.ifd_loss_ratio(loss_conditional, loss_unconditional) if has_uncond else math.nan,
    } | ranked


class LengthScorer:
    """Response length in cl100k_base tokens (cheap; still cached like the others)."""

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on."""
        return {"kind": "length", "encoding": "cl100k_base"}

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records."""
        return {"kind": "length", "encoding": "cl100k_base"}

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """{'length': tokens} per pair."""
        return [{"length": token_length(p.response)} for p in pairs]


def _windows(pairs: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    window: list[Pair] = []
    for pair in pairs:
        window.append(pair)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _score_window(window: list[Pair], scorer: Any, cache: ResultCache, chunk: int, skip_invalid: bool,
                  skipped: list[dict[str, Any]], progress: Any = None) -> list[dict[str, Any] | None]:
    material = scorer.key_material()
    keys = [content_hash(material, p.instruction, p.response) for p in window]
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if progress is not None:
        progress.update(len(window) - len(missing))
    for start in range(0, len(missing), chunk):
        todo = missing[start : start + chunk]
        try:
            values = scorer.compute([window[i] for i in todo])
        except InputError:
            if not skip_invalid:
                raise
            values = []
            for i in todo:  # find the bad pair(s) one by one
                try:
                    values.append(scorer.compute([window[i]])[0])
                except InputError as error:
                    path, _, line = (window[i].source or error.path).rpartition(":")
                    skipped.append(InputError(path, int(line), error.reason).as_row() if line.isdigit() else error.as_row())
                    values.append(None)
        cache.put_many((keys[i], v) for i, v in zip(todo, values) if v is not None)
        if progress is not None:
            progress.update(len(todo))
    return [cache.get(key) for key in keys]


def score_pairs(
    pairs: Iterable[Pair], scorers: Sequence[Any], cache_root: str | Path, options: ScoreOptions,
    progress: Any = None, skipped: list[dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one metrics row per pair, in input order; results come from the cache when present
    and are written to it as soon as they are computed. `progress` counts (pair, scorer) steps."""
    skipped = skipped if skipped is not None else []
    caches = [ResultCache(Path(cache_root) / content_hash(s.key_material())[:16]) for s in scorers]
    chunk = max(1, min(options.window, 16))  # small enough that the progress bar moves every few seconds
    try:
        for window in _windows(pairs, options.window):
            per_scorer = [_score_window(window, s, c, chunk, options.skip_invalid, skipped, progress)
                          for s, c in zip(scorers, caches)]
            for i, pair in enumerate(window):
                parts = [results[i] for results in per_scorer]
                if any(part is None for part in parts):
                    continue
                row: dict[str, Any] = {"id": pair.id, "teacher": pair.teacher}
                for part in parts:
                    row.update(part)
                yield row
    finally:
        for cache in caches:
            cache.close()


class DeferredScorer:
    """A scorer whose model loads on first use. Its cache key is known from the spec alone, so a
    run whose results are all cached (or computed by other workers) never loads the model."""

    def __init__(self, material: dict[str, Any], description: dict[str, Any], build: Callable[[], Any]):
        self._material, self._description, self._build, self._scorer = material, description, build, None

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on (computed without loading the model)."""
        return self._material

    def describe(self) -> dict[str, Any]:
        """The loaded scorer's description, or what the spec says when nothing was loaded."""
        return self._scorer.describe() if self._scorer is not None else self._description

    def compute(self, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
        """Load the model (once), then compute."""
        if self._scorer is None:
            from tqdm.auto import tqdm

            model = self._description.get("model", {}).get("spec", "")
            note = " (the first load of a GGUF converts it once: a minute or more)" if model.startswith(("gguf:", "packaged:")) else ""
            tqdm.write(f"loading {model}{note}", file=sys.stderr)
            self._scorer = self._build()
        return self._scorer.compute(pairs)


def _deferred_lm(spec: str, role: str, options: ScoreConfig) -> DeferredScorer:
    from teachfit.models import LOADERS, ModelSpec, has_loader, load

    parsed = ModelSpec.parse(spec)
    if has_loader("lm_scorer", parsed.prefix):  # a served (openai:) or vLLM (vllm:) model: its own scorer
        material = LOADERS["lm_scorer_key"][parsed.prefix](parsed, options, role)
        description = {"role": role, "model": {"spec": str(parsed), "backend": parsed.prefix}}
        return DeferredScorer(material, description, lambda: load("lm_scorer", parsed, lm_role=role, options=options))
    from teachfit.models.hf import pick_device, pick_dtype

    dtype = str(pick_dtype(options.dtype, pick_device(options.device))).removeprefix("torch.")
    material = lm_key_material(parsed.fingerprint(), dtype, options.max_length, options.unconditional_for(role))
    description = {"role": role, "model": {"spec": str(parsed), "fingerprint": parsed.fingerprint(), "dtype": dtype}}
    return DeferredScorer(material, description,
                          lambda: LMScorer(load("causal_lm", parsed, **options.load_options()), role, options))


def build_scorers(student: str, reference: str | None, reward_model: str | None, reward_kind: str,
                  options: ScoreConfig, reward_column: str | None = None, sources: Sequence[Any] = ()) -> list[Any]:
    """The scorers the specs name and `options.metrics` asks for; models load only when a pair needs
    them. With `reward_column` the reward comes from the input files instead of a model."""
    from teachfit.reward import FileRewardScorer, deferred_reward

    scorers: list[Any] = []
    if options.wants("car", "ppl_self", "ifd_self", "rsr_self"):  # `--metrics reward,length` needs no student pass
        scorers.append(_deferred_lm(student, "self", options))
    if reference and options.wants("ppl_ref", "ifd_ref"):
        scorers.append(_deferred_lm(reference, "ref", options))
    if reward_model and options.wants("car", "reward"):
        scorers.append(deferred_reward(reward_model, reward_kind, options))
    elif reward_column and options.wants("car", "reward"):
        scorers.append(FileRewardScorer(reward_column, sources))
    if options.wants("length"):
        scorers.append(LengthScorer())
    return scorers


def pair_instruction(pair: Pair) -> str:
    """The instruction a pair answers (its `instruction_id`, else its id without a `#s<k>` suffix)."""
    from teachfit.select import instruction_key

    return instruction_key({"id": pair.id, **pair.extra})


def sampled_instructions(paths: Sequence[Path], n: int, seed: int) -> set[str]:
    """The same n instructions for every teacher: those whose seeded hash is smallest, so a larger
    n later contains a smaller one (and the cache makes extending the sample compute only the new)."""
    from teachfit.records import read_pairs

    keys = {pair_instruction(p) for p in read_pairs(paths, skip_invalid=True)}
    return set(sorted(keys, key=lambda key: content_hash(seed, key))[:n])


def count_rows(paths: Sequence[Path]) -> int:
    """Rows in the input files (lines of JSONL, row counts of Parquet), for progress bars."""
    total = 0
    for path in paths:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        elif path.suffix == ".jsonl":
            with path.open("rb") as handle:
                total += sum(1 for line in handle if line.strip())
    return total


def score_files(
    inputs: Sequence[str | Path], out: str | Path, student: str, reference: str | None = None,
    reward_model: str | None = None, reward_kind: str = "auto", options: ScoreOptions | None = None,
    cache_dir: str | Path | None = None, scorers: Sequence[Any] | None = None, show_progress: bool = True,
    reward_column: str | None = None,
) -> dict[str, Any]:
    """Score every pair of the input files (or run directories) into one Parquet file at `out`.

    Returns the metadata written with it: models, options, versions, counts and skipped rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from teachfit.records import ReadStats, expand_inputs, read_pairs
    from teachfit.versions import versions

    options = options or ScoreOptions()
    out = Path(out)
    paths = expand_inputs(inputs)
    cache_dir = Path(cache_dir) if cache_dir else out.parent / ".teachfit_cache" / "scores"
    started = time.perf_counter()
    scorers = list(scorers) if scorers is not None else build_scorers(student, reference, reward_model, reward_kind,
                                                                      options, reward_column, paths)
    stats, skipped = ReadStats(), []
    pairs = read_pairs(paths, skip_invalid=options.skip_invalid, stats=stats, reward_column=reward_column)
    total = count_rows(paths)
    if options.sample:
        chosen = sampled_instructions(paths, options.sample, options.seed)
        pairs = (p for p in pairs if pair_instruction(p) in chosen)
        total = min(total, options.sample * len(paths))  # for the progress bar (one teacher per file)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # one per process: two runs never share it
    out.parent.mkdir(parents=True, exist_ok=True)
    writer, rows_written, truncated = None, 0, 0
    try:
        with tqdm(total=total * len(scorers), unit="step", desc=f"score ({len(scorers)} scorers x pairs)",
                  disable=not show_progress) as bar:
            for batch in _windows(score_pairs(pairs, scorers, cache_dir, options, bar, skipped), options.window):
                table = pa.Table.from_pylist(batch)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
                rows_written += len(batch)
                truncated += sum(bool(r.get("truncated")) for r in batch)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    metadata = {
        "stage": "score", "inputs": [str(p) for p in paths], "options": asdict(options),
        "scorers": [s.describe() for s in scorers], "versions": versions(),
        "counts": {"read": stats.read, "scored": rows_written, "truncated": truncated,
                   "skipped": len(stats.skipped) + len(skipped), **stats.counts},
        "skipped": stats.skipped + skipped, "seconds": round(time.perf_counter() - started, 3),
    }
    if writer is None:
        raise InputError(paths[0] if paths else out, None, "no valid pairs to score")
    writer.add_key_value_metadata({"teachfit": json.dumps(metadata)})
    writer.close()
    os.replace(tmp, out)
    return metadata
