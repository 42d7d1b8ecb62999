"""The token and cost ledger: tokens in and out per (stage, model), totalled from what the stages wrote.

    RUN/ledger.csv   stage, model, requests, tokens_in, tokens_out, counted_by[, cost_usd]

Counted from the files, never from a running total: RUN/responses/<dataset>.jsonl (generate),
evaluations/answers/*.jsonl (the answers of the model under test and of a baseline model) and
evaluations/judgments/*.jsonl (the judge's replies, each with its `usage`). Each stored response
counts once, as often as the stages resume, re-run or read it from a cache: a judgment taken
from the cache was paid for once, by the run that made it. Not counted: answers that failed,
a judge's retries of an unparsable reply (only the last attempt is stored), datasets copied in
from a study's `responses:` (made elsewhere), and forward passes (score) that make no tokens.

`counted_by` says where the numbers come from: `server` (the `usage` an OpenAI-compatible server
reported), `tokenizer` (counted in process by the model's own tokenizer: transformers, llama.cpp,
vLLM), `cl100k estimate` (a server that sent no usage: tiktoken cl100k of the instruction and the
answer, without the chat template), `not reported` (a judge server that sent no usage: 0).

A price table (`--prices FILE`, YAML or JSON) maps a model, as the study names it, to USD per
million tokens: `gpt-4o-mini: {input: 0.15, output: 0.60, batch_discount: 0.5}`; batch_discount
(the fraction taken off, 0 <= d < 1) applies to answers made through a provider's batch API.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from teachfit.atomic import atomic_write, write_json_atomic
from teachfit.models.spec import uses_batch_api
from teachfit.records import InputError

COLUMNS = ("stage", "model", "requests", "tokens_in", "tokens_out", "counted_by")
PER_TOKENS = 1_000_000  # prices are USD per this many tokens


# ---- prices ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Price:
    """USD per million tokens in (prompt) and out (completion); batch_discount: the fraction taken
    off requests made through a batch API (0.5 = half price)."""

    input: float
    output: float
    batch_discount: float = 0.0

    def cost(self, tokens_in: int, tokens_out: int, batched_in: int = 0, batched_out: int = 0) -> float:
        """USD for these tokens; batched_in/out of them (already included in tokens_in/out) at the discount."""
        full = (tokens_in - batched_in) * self.input + (tokens_out - batched_out) * self.output
        cheap = (batched_in * self.input + batched_out * self.output) * (1.0 - self.batch_discount)
        return (full + cheap) / PER_TOKENS


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def read_prices(paths: str | Path | Iterable[str | Path] | None) -> dict[str, Price]:
    """The price tables of one or more files (a later file's entry for a model replaces an
    earlier one's); every bad entry an InputError at its file:line. None or [] gives {}."""
    from teachfit.yaml_file import read_yaml

    if paths is None:
        return {}
    prices: dict[str, Price] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        data, lines = read_yaml(path)
        if not isinstance(data, dict) or not data:
            raise InputError(path, 1, "a price table maps model names to {input: USD, output: USD} per million "
                                      "tokens, e.g. `gpt-4o-mini: {input: 0.15, output: 0.60}`")
        prices.update({model: _price_entry(path, lines, model, entry) for model, entry in data.items()})
    return prices


def _price_entry(path: str | Path, lines: dict[tuple, int], model: Any, entry: Any) -> Price:
    """One model's entry of a price table, checked; InputError at the line of what is wrong."""
    from teachfit.yaml_file import line_of

    def fail(message: str, *key: str) -> None:
        raise InputError(path, line_of(lines, (str(model), *key)), f"'{model}': {message}")

    if not isinstance(model, str) or not model:
        fail("a model name must be text")
    if not isinstance(entry, dict):
        fail(f"must be a mapping {{input: USD, output: USD}} per million tokens, got {type(entry).__name__}")
    unknown = sorted(set(entry) - {"input", "output", "batch_discount"}, key=str)
    if unknown:
        fail(f"unknown key '{unknown[0]}' (known: input, output, batch_discount)", unknown[0])
    for key in ("input", "output"):
        if key not in entry:
            fail(f"needs '{key}' (USD per million tokens)")
        if _number(entry[key]) is None or entry[key] < 0:
            fail(f"'{key}' must be a number >= 0 (USD per million tokens), got {entry[key]!r}", key)
    discount = entry.get("batch_discount", 0.0)
    if _number(discount) is None or not 0 <= discount < 1:
        fail(f"'batch_discount' must be a fraction 0 <= d < 1 (0.5 = half price), got {discount!r}", "batch_discount")
    return Price(float(entry["input"]), float(entry["output"]), float(discount))


def model_names(spec: str) -> list[str]:
    """The names a price table may use for a model spec, most exact first: the spec, without its
    `?options`, without its prefix, the served model's name (openai:NAME@url), the last component."""
    bare = spec.split("?", 1)[0]
    body = bare.split(":", 1)[1] if ":" in bare else bare
    served = body.split("@", 1)[0]
    names = [spec, bare, body, served, served.rstrip("/").split("/")[-1]]
    return list(dict.fromkeys(n for n in names if n))


def price_of(spec: str, prices: dict[str, Price]) -> Price | None:
    """The price of a model spec in a table (see model_names), else None."""
    return next((prices[name] for name in model_names(spec) if name in prices), None)


# ---- counting what the stages wrote ------------------------------------------------------------
@dataclass
class Tally:
    """Tokens of one (stage, model): requests, tokens in and out, and how much went through a batch API."""

    stage: str
    model: str
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    batched_in: int = 0
    batched_out: int = 0
    counted_by: set = field(default_factory=set)

    def add(self, tokens_in: int, tokens_out: int, counted_by: str, batched: bool = False) -> None:
        self.requests += 1
        self.tokens_in, self.tokens_out = self.tokens_in + tokens_in, self.tokens_out + tokens_out
        if batched:
            self.batched_in, self.batched_out = self.batched_in + tokens_in, self.batched_out + tokens_out
        self.counted_by.add(counted_by)

    def row(self, prices: dict[str, Price] | None = None) -> dict[str, Any]:
        """The ledger row; with a price table also cost_usd (None when the table has no price for the model)."""
        row = {"stage": self.stage, "model": self.model, "requests": self.requests, "tokens_in": self.tokens_in,
               "tokens_out": self.tokens_out, "counted_by": "+".join(sorted(self.counted_by))}
        if prices:
            price = price_of(self.model, prices)
            row["cost_usd"] = None if price is None else round(
                price.cost(self.tokens_in, self.tokens_out, self.batched_in, self.batched_out), 6)
        return row


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; torn or foreign lines (a killed writer) are skipped."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def is_batched(backend: Any) -> bool:
    """Whether a record's backend says its answer came through a provider's batch API."""
    if not isinstance(backend, dict):
        return False
    return bool(backend.get("batch")) or "batch" in str(backend.get("backend", ""))


def _answer_tokens(record: dict[str, Any]) -> tuple[int, int, str]:
    """(tokens in, tokens out, counted_by) of one stored answer."""
    backend = record.get("backend") if isinstance(record.get("backend"), dict) else {}
    tokens_in, tokens_out = _count(record.get("prompt_tokens")), _count(record.get("completion_tokens"))
    if not str(backend.get("backend", "")).startswith("openai"):
        return tokens_in, tokens_out, "tokenizer"
    if tokens_in or tokens_out or not record.get("response"):
        return tokens_in, tokens_out, "server"
    from teachfit.tokens import token_length

    return token_length(str(record.get("instruction") or "")), token_length(str(record["response"])), "cl100k estimate"


def _tally_answers(files: Iterable[Path], stage: str, tallies: dict[tuple[str, str], Tally]) -> None:
    """Add every stored finished answer of generation-record files (one per instruction, sample,
    model and settings: the last one, as the stages keep it)."""
    for path in files:
        latest: dict[tuple, dict[str, Any]] = {}
        for record in _json_lines(path):
            if record.get("error") or "instruction_id" not in record:
                continue
            settings = json.dumps(record.get("gen_response_configs"), sort_keys=True, default=str)
            latest[(str(record["instruction_id"]), record.get("sample", 0), record.get("model"), settings)] = record
        for record in latest.values():
            model = str(record.get("model") or record.get("teacher") or path.stem)
            tally = tallies.setdefault((stage, model), Tally(stage, model))
            tokens_in, tokens_out, how = _answer_tokens(record)
            tally.add(tokens_in, tokens_out, how, is_batched(record.get("backend")))


def _judges_by_prefix(evaluations: Path) -> dict[str, str]:
    """'<name>--<bench>' -> the judge spec its scores file records."""
    judges = {}
    for path in evaluations.glob("scores-*.json"):
        try:
            judge = json.loads(path.read_text(encoding="utf-8"))["results"].get("judge")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(judge, str) and judge:
            judges[path.stem[len("scores-"):]] = judge
    return judges


def _tally_judgments(evaluations: Path, tallies: dict[tuple[str, str], Tally]) -> None:
    """Add every stored judge reply (AE2 rows, AH games) with the usage it recorded."""
    judges = _judges_by_prefix(evaluations)
    for path in sorted((evaluations / "judgments").glob("*.jsonl")):
        owners = [p for p in judges if path.stem.startswith(p + "-")]
        judge = judges[max(owners, key=len)] if owners else "unknown judge"
        tally = tallies.setdefault(("evaluate", judge), Tally("evaluate", judge))
        batched, served = uses_batch_api(judge), judge.startswith(("openai:", "openai-batch:"))
        for row in _json_lines(path):
            for reply in row.get("games") if isinstance(row.get("games"), list) else [row]:
                usage = reply.get("usage") if isinstance(reply, dict) and isinstance(reply.get("usage"), dict) else {}
                reported = "prompt_tokens" in usage or "completion_tokens" in usage
                how = ("server" if served else "tokenizer") if reported else "not reported"
                tally.add(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), how, batched)


def given_datasets(root: Path) -> set[str]:
    """The datasets a study copied in from `responses:` files (RUN/manifest.json): made elsewhere."""
    try:
        sections = json.loads((root / "manifest.json").read_text(encoding="utf-8"))["config"]["sections"]
        return {Path(str(p)).stem for p in sections.get("responses") or []}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def tally(root: str | Path) -> list[Tally]:
    """Tokens per (stage, model) of a run directory (responses/, evaluations/) or of an evaluate
    output folder (answers/, judgments/ directly in it), in stage then model order."""
    root, tallies = Path(root), {}
    given = given_datasets(root)
    responses = root / "responses"
    if responses.is_dir():
        _tally_answers([p for p in sorted(responses.glob("*.jsonl")) if p.stem not in given], "generate", tallies)
    for evaluations in (root / "evaluations", root):
        if (evaluations / "answers").is_dir():
            _tally_answers(sorted((evaluations / "answers").glob("*.jsonl")), "evaluate", tallies)
        if (evaluations / "judgments").is_dir():
            _tally_judgments(evaluations, tallies)
    order = {"generate": 0, "evaluate": 1}
    return sorted(tallies.values(), key=lambda t: (order.get(t.stage, 2), t.model))


PRICES_USED = ".ledger-prices.json"  # the last price table given for a run, beside its ledger


def write_ledger(root: str | Path, prices: dict[str, Price] | None = None) -> list[dict[str, Any]]:
    """Total the run's tokens (see tally) and write them to ROOT/ledger.csv atomically (with a
    price table, a cost_usd column: empty for a model the table does not price); returns the rows.
    Without a table, the last one given for this run is used (so `evaluate --prices` then a plain
    `generate` keeps the costs). Nothing is written when there is nothing to count."""
    remembered, given = Path(root) / PRICES_USED, prices
    if not given and remembered.is_file():
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            prices = {str(m): Price(**p) for m, p in json.loads(remembered.read_text(encoding="utf-8")).items()}
    rows = [t.row(prices) for t in tally(root)]
    if rows:
        if given:  # (a table read back from there is not written again)
            write_json_atomic(remembered, {model: asdict(price) for model, price in given.items()})
        with atomic_write(Path(root) / "ledger.csv", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS) + (["cost_usd"] if prices else []))
            writer.writeheader()
            writer.writerows(rows)
    return rows


# ---- what the summaries print ------------------------------------------------------------------
def _usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def ledger_line(rows: Sequence[dict[str, Any]], stage: str | None = None, estimate: bool = False) -> str:
    """One line: tokens in and out per model (of one stage), and the cost where priced."""
    rows = [r for r in rows if stage is None or r["stage"] == stage]
    if not rows:
        return ""
    about, bound = ("~", "<= ") if estimate else ("", "")
    parts = []
    for r in rows:
        cost = r.get("cost_usd")
        priced = "" if "cost_usd" not in r else " (no price)" if cost is None else f" {about}{_usd(cost)}"
        label = r["model"] if stage else f"{r['stage']} {r['model']}"
        parts.append(f"{label}: {r['requests']} requests, {about}{r['tokens_in']} in, {bound}{r['tokens_out']} out{priced}")
    costs = [r["cost_usd"] for r in rows if r.get("cost_usd") is not None]
    total = f"; total {about}{_usd(sum(costs))}" if len(costs) > 1 else ""
    return ("estimated tokens: " if estimate else "tokens: ") + "; ".join(parts) + total


def estimate_rows(jobs: Iterable[tuple[str, Sequence[str], int]],
                  prices: dict[str, Price] | None = None) -> list[dict[str, Any]]:
    """Before a run: per model, from (model spec, the instruction texts it will answer, one per
    answer, max_new_tokens) jobs, tokens in = cl100k tokens of the instruction texts (the chat
    template adds a few per request) and tokens out = answers x max_new_tokens, an upper bound."""
    from teachfit.tokens import token_length

    tallies: dict[str, Tally] = {}
    for model, texts, max_new_tokens in jobs:
        tally, batched = tallies.setdefault(model, Tally("generate", model)), uses_batch_api(model)
        for text in texts:
            tally.add(token_length(text), max_new_tokens, "cl100k estimate", batched)
    return [t.row(prices) for t in tallies.values()]
