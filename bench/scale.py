"""teachfit at the paper's scale: how fast is everything around the forward pass?

Inputs shaped like Generator-Zoo (one wide row per instruction, 20 generators' answers in it,
each answer a dict {"content": ..., <reward model>: float}), from 20k pairs up to `--max-pairs`
(default 200k; the paper's 2M is supported but takes long on 2 cores). The student is nearly
free (a 1-layer, 32-wide random GPT-2 built here, with a byte-level BPE tokenizer trained here),
rewards come from the file (`--reward-column`), so the time measured is teachfit's own.

For each size it prints: the LM path's pairs/s (`score_files` with `--metrics car`, empty
cache), a cached re-run's time, `teachfit rank` and `teachfit select --by reward` on the result,
each step's peak RSS (each step runs in its own process), and where the time per pair goes
(read, template+tokenize, hash, cache, forward, write), measured with time.perf_counter around
teachfit's functions (wrapped here, from the outside: nothing in teachfit changes).

    .venv/bin/python bench/scale.py [--max-pairs 200000] [--sizes 20000,200000] [--threads 1] [--json out.json]
    .venv/bin/python bench/scale.py --table out.json    (the tables of an earlier run again)

The student runs on one torch thread by default (`--threads`): it is nearly free, and a second
process on a small machine would otherwise distort the forward time. Each step runs in its own
process; "LM path s" and the per-pair parts exclude Python's and torch's import (start-up).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REWARD = "Skywork-Reward-Llama-3.1-8B"
GENERATORS = [f"generator-{g:02d}" for g in range(20)]
WORDS = ("the model learns to answer questions about science history code and math with short clear "
         "steps while the student copies the teacher style because compatible data is easier to fit").split()
PARTS = ("load", "read", "template+tokenize", "hash", "cache", "forward", "write", "other")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- inputs and the student
def write_zoo(path: Path, pairs: int, seed: int = 0) -> None:
    """Generator-Zoo wide rows: pairs / 20 instructions, every generator answered each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows_total = pairs // len(GENERATORS)
    writer = None
    for start in range(0, rows_total, 2000):
        batch = []
        for i in range(start, min(rows_total, start + 2000)):
            record = {"uuid": f"u{i}", "instruction": f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(8, 30))),
                      "task_category": "Other"}
            for generator in GENERATORS:
                record[generator] = {"content": " ".join(rng.choices(WORDS, k=rng.randint(40, 160))),
                                     REWARD: round(rng.gauss(0, 2), 3)}
            batch.append(record)
        table = pa.Table.from_pylist(batch)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def build_student(folder: Path) -> str:
    """A 1-layer, 32-wide random GPT-2 and a byte-level BPE tokenizer (vocabulary 1000) trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return str(folder)
    torch.manual_seed(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(random.Random(i).choices(WORDS, k=40)) + f" Question {i}: 0123456789" for i in range(200)]
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=1, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------- instrumentation (from outside)
class Clock:
    """Seconds spent in each part; nested wrapped calls are charged to the innermost part only."""

    def __init__(self) -> None:
        self.seconds = {part: 0.0 for part in PARTS}
        self.stack: list[list] = []

    def timed(self, part: str, function):
        def wrapper(*args, **kwargs):
            self.stack.append([part, 0.0])
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                _, inner = self.stack.pop()
                self.seconds[part] += spent - inner
                if self.stack:
                    self.stack[-1][1] += spent
        return wrapper

    def timed_iter(self, part: str, function):
        """A generator function whose every next() is charged to `part`."""
        step = self.timed(part, next)

        def wrapper(*args, **kwargs):
            iterator = iter(function(*args, **kwargs))
            while True:
                try:
                    yield step(iterator)
                except StopIteration:
                    return
        return wrapper


def instrument(clock: Clock) -> None:
    import pyarrow.parquet as pq

    from teachfit import store
    from teachfit.score import engine, lm

    import teachfit.models

    teachfit.models.load = clock.timed("load", teachfit.models.load)  # the student, once
    engine.read_pairs = clock.timed_iter("read", engine.read_pairs)
    engine.count_records = clock.timed("read", engine.count_records)
    engine._several_pairs_per_row = clock.timed("read", engine._several_pairs_per_row)
    engine.content_hash = clock.timed("hash", engine.content_hash)
    lm.encode_pairs = clock.timed("template+tokenize", lm.encode_pairs)
    lm.response_nll = clock.timed("forward", lm.response_nll)
    for name in ("__init__", "put_many", "__contains__", "get"):
        if hasattr(store.ResultCache, name):
            setattr(store.ResultCache, name, clock.timed("cache", getattr(store.ResultCache, name)))
    pq.ParquetWriter.write_table = clock.timed("write", pq.ParquetWriter.write_table)  # (rows to a table: "other")


# ---------------------------------------------------------------- the steps (each in its own process)
def child_score(data: str, student: str, out: str, cache: str, token_budget: int | None, threads: int) -> dict:
    from teachfit.config import ScoreConfig
    from teachfit.score.engine import score_files

    import torch  # imports are start-up, not per pair: done before the clock starts
    import transformers  # noqa: F401

    torch.set_num_threads(threads)  # default 1: the student is nearly free, and a busy neighbour can't distort it

    clock = Clock()
    instrument(clock)
    config = ScoreConfig(student=[f"hf:{student}"], metrics=["car"], reward_column=REWARD, progress=False,
                         dtype="float32", token_budget=token_budget)
    started = time.perf_counter()
    metadata = score_files([data], out, f"hf:{student}", config, cache_dir=cache)
    wall = time.perf_counter() - started
    clock.seconds["other"] = wall - sum(clock.seconds.values())
    return {"seconds": wall, "parts": clock.seconds, "counts": metadata["counts"], "peak_rss_mb": peak_rss_mb()}


def child_cli(args: list[str]) -> dict:
    from teachfit.cli import main

    sys.argv = ["teachfit", *args]
    started = time.perf_counter()
    try:
        main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def in_child(*args: str) -> dict:
    """Run this script's --child step in a fresh process (its own peak RSS); its result as a dict."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", result.name, *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed:\n{done.stderr[-3000:]}")
        report = json.loads(Path(result.name).read_text())
        report["process_seconds"] = time.perf_counter() - started  # with Python's and teachfit's start-up
        return report


def measure(size: int, work: Path, student: str, token_budget: int | None, threads: int) -> dict:
    data = work / f"zoo-{size}.parquet"
    if not data.exists():
        write_zoo(data, size)
    row: dict = {"pairs": size}
    out, cache = work / f"scores-{size}.parquet", work / f"cache-{size}"
    shutil.rmtree(cache, ignore_errors=True)  # the first run computes every pair
    cold = in_child("score", str(data), student, str(out), str(cache), str(token_budget or 0), str(threads))
    warm = in_child("score", str(data), student, str(out), str(cache), str(token_budget or 0), str(threads))
    row |= {"lm": cold, "cached": warm}
    row["rank"] = in_child("cli", "rank", str(out), "--json-out", str(work / f"ranking-{size}.json"))
    row["select"] = in_child("cli", "select", str(out), "--by", "reward", "--out", str(work / f"selection-{size}.jsonl"))
    return row


def table(rows: list[dict]) -> str:
    lines = ["| pairs | LM path pairs/s | LM path s | peak RSS MB | cached re-run s | rank s (RSS MB) | select --by reward s (RSS MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lm, cached, rank, select = r["lm"], r["cached"], r["rank"], r["select"]
        lines.append(f"| {r['pairs']:,} | {r['pairs'] / lm['seconds']:,.0f} | {lm['seconds']:.1f} | {lm['peak_rss_mb']:,.0f} "
                     f"| {cached['seconds']:.1f} | {rank['seconds']:.1f} ({rank['peak_rss_mb']:,.0f}) "
                     f"| {select['seconds']:.1f} ({select['peak_rss_mb']:,.0f}) |")
    lines += ["", "Where the time per pair goes (microseconds per pair; cold: empty cache, cached: the re-run):", "",
              "| pairs | run | " + " | ".join(PARTS) + " | total |", "|---" * (len(PARTS) + 3) + "|"]
    for r in rows:
        for name, run in (("cold", r["lm"]), ("cached", r["cached"])):
            lines.append(f"| {r['pairs']:,} | {name} | " + " | ".join(f"{1e6 * run['parts'][p] / r['pairs']:,.0f}" for p in PARTS)
                         + f" | {1e6 * run['seconds'] / r['pairs']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--table":  # print the tables of a --json file again
        print(table(json.loads(Path(sys.argv[2]).read_text())))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        result_path, step, *args = sys.argv[2:]
        if step == "score":
            data, student, out, cache, budget, threads = args
            report = child_score(data, student, out, cache, int(budget) or None, int(threads))
        else:
            report = child_cli(args)
        Path(result_path).write_text(json.dumps(report))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated pair counts (default: 20000 and --max-pairs)")
    parser.add_argument("--max-pairs", type=int, default=200_000, help="largest size (2,000,000 is the paper's)")
    parser.add_argument("--token-budget", type=int, default=None, help="score's --token-budget (default: the device's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the student (default 1)")
    parser.add_argument("--work", default=None, help="folder for inputs, caches and outputs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the measurements here")
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",")] if options.sizes else sorted({20_000, options.max_pairs})
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(options.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        student = build_student(work / "student")
        rows = []
        for size in sizes:
            rows.append(measure(size, work, student, options.token_budget, options.threads))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(table(rows))
        if options.json:
            Path(options.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
