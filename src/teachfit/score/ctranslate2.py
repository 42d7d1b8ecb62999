"""CTranslate2 as the engine of an in-process student or reference (`--engine ctranslate2`): the
same columns as teachfit.score.lm, over the same response tokens (teachfit.template), computed by
an inference runtime made for CPUs. `--compute-type float32` matches torch fp32 to about 1e-5
nats per token; `int8` quantizes the weights when the model loads (faster, a little off:
bench/score_throughput.py measures both against torch fp32 on your machine).

The model is converted once (ctranslate2.converters.TransformersConverter, float32) and cached
under teachfit's cache, keyed by the weights' fingerprint, as models/hf.py caches GGUF copies.

Its traps, and what is done about each:
  - it takes string tokens: each token id becomes the converted vocabulary's string at that id,
    and the vocabulary is checked once against the tokenizer (one string per id, the same order);
  - score_batch truncates at max_input_length (default 1024) without a word: it is passed 0
    (off); sequences are cut by teachfit's template at --max-length clamped to the model's
    positions (flagged `truncated`, as in lm.py), and the number of log-probs returned is checked;
  - score_batch gives no token ranks: when RSR is asked for, forward_batch's logits give the
    log-probs and the ranks (one pass; it holds a batch's tokens x vocabulary logits in memory);
  - models with sliding-window attention (Gemma 3: 512 tokens) fail in CTranslate2 4.8.5 on a batch
    of unequal lengths ("Length mask has size ...") and on a sequence longer than the window
    ("buffer to copy is of size 600 but current storage size is 512"): their batches hold sequences
    of one length, and their pairs are cut at the window (flagged `truncated`, said once on load).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from teachfit.atomic import DONE_MARKER, folder_done, folder_once
from teachfit.config import ScoreConfig
from teachfit.env import cache_root, require
from teachfit.forward import RANK_CLIP, BatchPlan, head_chunk_rows, plan_batches
from teachfit.models.spec import ModelSpec, ModelSpecError
from teachfit.score.base import DeferredScorer
from teachfit.score.lm import LMScorer, lm_key_material
from teachfit.template import EncodedPair

CONVERSION_VERSION = 1  # bump when the conversion changes, so old converted copies are not reused
# Logit elements (tokens x vocabulary) of one batch: CTranslate2 computes the logits of every position
# (score_batch too), so batches are capped at 64M fp32 = 256 MB of them. One sequence longer than this /
# vocabulary still gets a batch of its own (Gemma's 262k vocabulary: 2048 tokens hold 2 GiB of logits).
LOGIT_ELEMENTS = 64 * 1024 * 1024


def _source_folder(spec: ModelSpec) -> str:
    """A transformers folder or hub id the converter reads: a GGUF's dense fp32 copy (models/hf.py)."""
    if spec.prefix in ("gguf", "packaged"):
        from teachfit.models.hf import dense_copy_of_gguf

        return str(dense_copy_of_gguf(spec))
    return spec.name


def converted_copy(spec: ModelSpec) -> Path:
    """Folder of the CTranslate2 float32 conversion of `spec` (made once, then reused): any compute
    type loads from it (int8 is quantized at load). ModelSpecError, one line, when CTranslate2 has no
    converter for the architecture."""
    ctranslate2 = require("ctranslate2", "ctranslate2")
    transformers = require("transformers", "hf")
    target = cache_root() / "ctranslate2" / f"{spec.fingerprint()}-v{CONVERSION_VERSION}"
    if folder_done(target):
        return target
    source = _source_folder(spec)
    config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=False)
    loaders = getattr(ctranslate2.converters.transformers, "_MODEL_LOADERS", None)
    if loaders is not None and type(config).__name__ not in loaders:
        raise ModelSpecError(f"{spec}: CTranslate2 {ctranslate2.__version__} cannot convert {type(config).__name__} "
                             f"models: use --engine torch")
    with folder_once(target) as tmp:
        try:
            ctranslate2.converters.TransformersConverter(source, low_cpu_mem_usage=True).convert(
                str(tmp), quantization="float32", force=True)  # force: tmp exists (empty)
        except (ValueError, NotImplementedError) as error:
            raise ModelSpecError(f"{spec}: CTranslate2 cannot convert it ({str(error).splitlines()[0][:200]}): "
                                 "use --engine torch") from None
        _fill_special_tokens(tmp / "config.json")
        (tmp / DONE_MARKER).write_text(json.dumps({"source": str(spec), "converted_from": source,
                                                   "ctranslate2": ctranslate2.__version__}))
    return target


def _fill_special_tokens(config_path: Path) -> None:
    """CTranslate2 refuses to load a config whose bos/eos/unk token is null (a tokenizer without
    an unk token): the EOS string stands in. Scoring never uses them (token strings come from ids)."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    filler = config.get("eos_token") or config.get("bos_token") or ""
    for name in ("bos_token", "eos_token", "unk_token"):
        if name in config and config[name] is None:
            config[name] = filler
    config_path.write_text(json.dumps(config), encoding="utf-8")


def vocabulary_strings(folder: Path, tokenizer: Any, spec: ModelSpec) -> list[str]:
    """The converted vocabulary, one string per token id; ModelSpecError when a string repeats or
    the tokenizer gives an id another string (string tokens could not name that id)."""
    path = folder / "vocabulary.json"
    strings = json.loads(path.read_text(encoding="utf-8")) if path.exists() else \
        (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    seen: dict[str, int] = {}
    for index, string in enumerate(strings):
        if seen.setdefault(string, index) != index:
            raise ModelSpecError(f"{spec}: token string {string!r} names ids {seen[string]} and {index} in "
                                 "CTranslate2's vocabulary: use --engine torch")
    own = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), len(strings)))))
    for index, string in enumerate(own):
        if string != strings[index]:
            raise ModelSpecError(f"{spec}: CTranslate2's vocabulary names id {index} {strings[index]!r}, the tokenizer "
                                 f"{string!r}: use --engine torch")
    return strings


@dataclass
class CT2Model:
    """A CTranslate2 generator with the tokenizer and what identifies it (LoadedModel's shape)."""

    generator: Any
    tokenizer: Any
    spec: ModelSpec
    compute_type: str
    device: str
    strings: list[str]  # token id -> the vocabulary string CTranslate2 maps back to that id
    max_positions: int | None  # the model's positions, or its attention window when it has one (see the module)
    one_length_batches: bool = False  # sliding-window models: a batch holds sequences of one length

    @property
    def dtype(self) -> str:
        """The compute type (what LMScorer's describe calls the dtype)."""
        return self.compute_type

    def clamp_length(self, max_length: int) -> int:
        """`max_length` clamped to the model's positions, so that long pairs are truncated, not fatal."""
        return min(max_length, self.max_positions or max_length)

    def describe(self) -> dict[str, Any]:
        """What an output file records about this model."""
        return {"spec": str(self.spec), "fingerprint": self.spec.fingerprint(), "engine": "ctranslate2",
                "compute_type": self.compute_type, "device": self.device, "max_positions": self.max_positions,
                "ctranslate2": _version()}


def _version() -> str:
    """The installed CTranslate2's version (results are keyed by it), or the pip hint when it is missing."""
    return require("ctranslate2", "ctranslate2").__version__


def sliding_window(config: Any) -> int | None:
    """The attention window in tokens of a transformers config whose layers use one (Gemma 3's
    sliding_attention layers; Mistral's sliding_window), else None (Qwen2: use_sliding_window off)."""
    config = getattr(config, "get_text_config", lambda: config)()
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0 or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    return window if layer_types is None or "sliding_attention" in layer_types else None


def device_kind(device: str) -> str:
    """Where CTranslate2 runs for --device: 'cuda' for cuda[:N], else 'cpu' ('auto' too)."""
    return "cuda" if device.startswith("cuda") else "cpu"


def load_ct2(spec: ModelSpec, compute_type: str = "float32", device: str = "auto") -> CT2Model:
    """The converted model (converting it the first time) on the CPU (or `cuda[:N]` when asked),
    with as many threads as torch uses here."""
    ctranslate2 = require("ctranslate2", "ctranslate2")
    transformers = require("transformers", "hf")
    torch = require("torch", "hf")
    from teachfit.models.hf import position_limit

    folder = converted_copy(spec)
    source = _source_folder(spec)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    kind = device_kind(device)
    index = device.partition(":")[2] if kind == "cuda" else ""
    generator = ctranslate2.Generator(str(folder), device=kind, device_index=int(index or 0),
                                      compute_type=compute_type, intra_threads=torch.get_num_threads())
    config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=False)
    limit, window = position_limit(config), sliding_window(config)
    if window is not None:
        import sys

        print(f"{spec}: CTranslate2 {ctranslate2.__version__} scores {type(config).__name__} models' sliding-window "
              f"attention up to {window} tokens a pair: longer pairs are cut there (flagged truncated); --engine torch "
              "scores them whole", file=sys.stderr)
        limit = min(limit or window, window)
    return CT2Model(generator, tokenizer, spec, compute_type, device if kind == "cuda" else "cpu",
                    vocabulary_strings(folder, tokenizer, spec), limit, one_length_batches=window is not None)


def _first_scored(e: EncodedPair) -> int:
    """Position whose prediction is the first response token (as forward.response_nll)."""
    return max(e.response_start, 1) - 1


def _scored(model: CT2Model, batch: Sequence[EncodedPair]) -> list[tuple[float, int, float]]:
    """(sum of -log p of the response tokens in nats, their count, NaN: no ranks) by score_batch."""
    tokens = [[model.strings[i] for i in e.input_ids] for e in batch]
    results = model.generator.score_batch(tokens, max_batch_size=0, max_input_length=0)
    out = []
    for e, result in zip(batch, results):
        if len(result.log_probs) != len(e.input_ids) - 1:  # never a silent truncation
            raise RuntimeError(f"CTranslate2 scored {len(result.log_probs) + 1} of {len(e.input_ids)} tokens")
        scored = result.log_probs[_first_scored(e):]
        out.append((-math.fsum(scored), len(scored), math.nan))
    return out


def _ranked(model: CT2Model, batch: Sequence[EncodedPair]) -> list[tuple[float, int, float]]:
    """(sum of -log p, count, sum of clipped ranks) from forward_batch's logits: the log-softmax and
    the ranks (1 + logits strictly above the target's, at most RANK_CLIP) as forward.py takes them."""
    torch = require("torch", "hf")
    logits = model.generator.forward_batch([list(e.input_ids) for e in batch])
    if model.device.startswith("cuda"):
        logits = torch.as_tensor(logits, device=model.device)  # __cuda_array_interface__: no copy
    else:
        import numpy

        logits = torch.from_numpy(numpy.asarray(logits))  # __array_interface__: no copy
    step = head_chunk_rows(logits.shape[-1], logits.device)
    out = []
    for row, e in enumerate(batch):
        first = _first_scored(e)
        targets = torch.tensor(e.input_ids[first + 1:], dtype=torch.long, device=logits.device)
        total, ranks = 0.0, 0
        for start in range(0, len(targets), step):
            chosen = targets[start: start + step, None]  # predicted at positions first + start ...
            chunk = logits[row, first + start: first + start + len(chosen)].float()
            ranks += int(((chunk > chunk.gather(1, chosen)).sum(-1) + 1).clamp_(max=RANK_CLIP).sum())
            total -= float(torch.log_softmax(chunk, -1).gather(1, chosen).double().sum())
        out.append((total, len(targets), float(ranks)))
    return out


def ct2_response_nll(model: CT2Model, encoded: Sequence[EncodedPair], plan: BatchPlan, ranks: bool,
                     on_batch: Callable[[int], None] | None = None) -> list[tuple[float, int, float]]:
    """forward.response_nll's numbers under CTranslate2: per sequence (sum of -log p over response
    tokens in nats, response tokens, sum of clipped ranks, NaN without `ranks`), batched by
    forward.plan_batches under the plan's token budget capped by LOGIT_ELEMENTS."""
    plan = plan.on(model.device)
    plan = BatchPlan(max(1, min(plan.token_budget, LOGIT_ELEMENTS // len(model.strings))), plan.max_batch_size)
    results: list[Any] = [None] * len(encoded)
    for batch in plan_batches([len(e.input_ids) for e in encoded], plan):
        for part in _one_length_runs(batch, encoded) if model.one_length_batches else [batch]:
            sequences = [encoded[i] for i in part]
            for index, numbers in zip(part, (_ranked if ranks else _scored)(model, sequences)):
                results[index] = numbers
            if on_batch:
                on_batch(sum(len(e.input_ids) for e in sequences))
    return results


def _one_length_runs(batch: list[int], encoded: Sequence[EncodedPair]) -> list[list[int]]:
    """`batch` (sorted longest first by plan_batches) split into runs of sequences of one length."""
    runs: list[list[int]] = []
    for index in batch:
        if runs and len(encoded[runs[-1][0]].input_ids) == len(encoded[index].input_ids):
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def wants_ranks(role: str, options: ScoreConfig) -> bool:
    """Whether RSR is asked for this role (then forward_batch, not score_batch, does the pass)."""
    return options.wants(f"rsr_{role}")


def ct2_key_material(spec: ModelSpec, role: str, options: ScoreConfig) -> dict[str, Any]:
    """What a cached CTranslate2 result depends on: never equal to torch's ('lm') nor across compute
    types, devices (CPU and CUDA kernels give other int8 losses) or CTranslate2 versions; results
    with ranks (RSR) are kept apart from those without."""
    identity = {"model": spec.fingerprint(), "engine": "ctranslate2", "ctranslate2": _version(),
                "compute_type": options.compute_type, "device": device_kind(options.device),
                "ranks": wants_ranks(role, options)}
    return lm_key_material("lm-ctranslate2", identity, options.max_length, options.unconditional_for(role), role)


class CT2Scorer(LMScorer):
    """LMScorer's columns (RSR only when asked for) computed by CTranslate2."""

    def key_material(self) -> dict[str, Any]:
        """Everything a cached result depends on."""
        return ct2_key_material(self.loaded.spec, self.role, self.options)

    def _forward(self, encoded: list[Any], on_batch: Callable[[int], None]) -> list[tuple[float, int, float]]:
        """LMScorer's forward pass by CTranslate2 (ranks only when RSR is asked for)."""
        return ct2_response_nll(self.loaded, encoded, self.options.plan, wants_ranks(self.role, self.options), on_batch)


def deferred_ct2(spec: ModelSpec, role: str, options: ScoreConfig) -> DeferredScorer:
    """A CT2Scorer of a parsed hf:/gguf:/packaged: spec, converted and loaded when a pair needs it."""
    description = {"role": role, "model": {"spec": str(spec), "fingerprint": spec.fingerprint(),
                                           "engine": "ctranslate2", "compute_type": options.compute_type}}
    return DeferredScorer(ct2_key_material(spec, role, options), description,
                          lambda: CT2Scorer(load_ct2(spec, options.compute_type, options.device), role, options))
