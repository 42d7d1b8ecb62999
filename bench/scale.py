"""teachfit at the paper's scale: how fast is everything around the forward pass?

Inputs shaped like Generator-Zoo (one wide row per instruction, 20 generators' answers in it,
each answer a dict {"content": ..., <reward model>: float}), from 20k pairs up to `--max-pairs`
(default 200k; the paper's 2M is supported but takes long on 2 cores). The student is nearly
free (a 1-layer, 32-wide random GPT-2 built here, with a byte-level BPE tokenizer trained here),
rewards come from the file (`--reward-column`), so the time measured is teachfit's own.

For each size it prints: the LM path's pairs/s (`score_files` with `--metrics car`, empty
cache) and its CPU seconds (both threads: on a shared machine, the work done whoever else runs),
its peak RSS and the part of it beyond the loaded student (RSS noted when the model is loaded), a
cached re-run's time, `teachfit rank` and `teachfit select --by reward` on the result, each
step's peak RSS (each step runs in its own process), and where the time per pair goes (read,
template+tokenize, hash, cache, forward, write; the main thread's parts and the prefetch
thread's apart), measured with time.perf_counter around teachfit's functions (wrapped here,
from the outside: nothing in teachfit changes). With --cache-entries N it also builds a result
cache of N entries with the store's own writer (kept in --work: built once) and opens it: the
time to open, the index's size, the peak RSS, and the time per entry read back.

    .venv/bin/python bench/scale.py [--max-pairs 200000] [--sizes 20000,200000] [--threads 1] [--json out.json]
    .venv/bin/python bench/scale.py --sizes 20000,200000,2000000 --cache-entries 10000000 --work /tmp/scale
    .venv/bin/python bench/scale.py --sizes 0 --cache-entries 10000000 --work /tmp/scale   (the cache alone)
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
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REWARD = "Skywork-Reward-Llama-3.1-8B"
GENERATORS = [f"generator-{g:02d}" for g in range(20)]
WORDS = ("the model learns to answer questions about science history code and math with short clear "
         "steps while the student copies the teacher style because compatible data is easier to fit").split()
PARTS = ("load", "read", "template+tokenize", "hash", "cache", "forward", "write", "wait", "other")


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over a fork
    and exec, so a step started by this script (which holds torch, 450 MB) read at least 450 MB."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024  # kB


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
    """Seconds spent in each part, per thread kind ('main', or 'prefetch': the engine's background
    thread, whose work overlaps the forward pass); nested wrapped calls are charged to the
    innermost part only."""

    def __init__(self) -> None:
        self.seconds = {kind: {part: 0.0 for part in PARTS} for kind in ("main", "prefetch")}
        self.local = threading.local()

    def timed(self, part: str, function):
        def wrapper(*args, **kwargs):
            stack = self.local.__dict__.setdefault("stack", [])
            stack.append([part, 0.0])
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                _, inner = stack.pop()
                kind = "main" if threading.current_thread() is threading.main_thread() else "prefetch"
                self.seconds[kind][part] += spent - inner
                if stack:
                    stack[-1][1] += spent
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


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def instrument(clock: Clock, memory: dict) -> None:
    import pyarrow.parquet as pq

    from teachfit import store
    from teachfit.score import engine, lm

    import teachfit.models

    load = clock.timed("load", teachfit.models.load)

    def load_noting_rss(*args, **kwargs):  # the RSS with the student loaded: "beyond the model" starts here
        loaded = load(*args, **kwargs)
        memory["rss_after_load_mb"] = current_rss_mb()
        return loaded

    teachfit.models.load = load_noting_rss  # the student, once
    engine.read_pairs = clock.timed_iter("read", engine.read_pairs)
    engine.count_records = clock.timed("read", engine.count_records)
    engine._several_pairs_per_row = clock.timed("read", engine._several_pairs_per_row)
    engine.content_hash = clock.timed("hash", engine.content_hash)
    engine._keys = clock.timed("hash", engine._keys)  # a window's keys (store.content_hashes)
    lm.encode_pairs = clock.timed("template+tokenize", lm.encode_pairs)
    lm.response_nll = clock.timed("forward", lm.response_nll)
    engine.in_background = clock.timed_iter("wait", engine.in_background)  # the main thread waiting for the next window
    for name in ("__init__", "put_many", "get_many"):
        setattr(store.ResultCache, name, clock.timed("cache", getattr(store.ResultCache, name)))
    pq.ParquetWriter.write_table = clock.timed("write", pq.ParquetWriter.write_table)  # (rows to a table: "other")


# ---------------------------------------------------------------- the steps (each in its own process)
def child_score(data: str, student: str, out: str, cache: str, token_budget: int | None, threads: int,
                prefetch: bool = True) -> dict:
    from teachfit.config import ScoreConfig
    from teachfit.score.engine import score_files

    import torch  # imports are start-up, not per pair: done before the clock starts
    import transformers  # noqa: F401

    torch.set_num_threads(threads)  # default 1: the student is nearly free, and a busy neighbour can't distort it

    if not prefetch:  # the engine as it was: each window read, tokenized and computed in turn
        from teachfit.score import engine

        engine.in_background = lambda items, *_, **__: items
    clock, memory = Clock(), {}
    instrument(clock, memory)
    config = ScoreConfig(student=[f"hf:{student}"], metrics=["car"], reward_column=REWARD, progress=False,
                         dtype="float32", token_budget=token_budget)
    samples, done = [], threading.Event()

    def sample_rss() -> None:  # RSS each second: flat memory is a flat curve over the run
        while not done.wait(1.0):
            samples.append(current_rss_mb())

    threading.Thread(target=sample_rss, daemon=True).start()
    started, cpu = time.perf_counter(), time.process_time()
    metadata = score_files([data], out, f"hf:{student}", config, cache_dir=cache)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    done.set()
    memory["rss_over_run_mb"] = [samples[min(len(samples) - 1, int(q * len(samples)))] for q in (0.1, 0.25, 0.5, 0.75, 0.99)] if samples else []
    clock.seconds["main"]["other"] = wall - sum(clock.seconds["main"].values())
    return {"seconds": wall, "parts": clock.seconds["main"], "prefetch_parts": clock.seconds["prefetch"],
            "cpu_seconds": cpu, "counts": metadata["counts"], "peak_rss_mb": peak_rss_mb(), **memory}


def child_cache_build(folder: str, entries: int, shards: int) -> dict:
    """A cache of `entries` LM results in `shards` shards, written by the store's own writer."""
    from teachfit.store import ResultCache, content_hash

    rng, started, per_shard = random.Random(0), time.perf_counter(), -(-entries // shards)
    for shard in range(shards):
        cache = ResultCache(Path(folder))
        for start in range(shard * per_shard, min(entries, (shard + 1) * per_shard), 100_000):
            stop = min(entries, (shard + 1) * per_shard, start + 100_000)
            cache.put_many((content_hash("bench", i), {
                "loss_self": rng.random() * 3, "ppl_self": rng.random() * 20, "mean_rank_self": rng.random() * 9,
                "rsr_self": rng.random(), "n_response_tokens": rng.randrange(1, 900), "truncated": False})
                for i in range(start, stop))
        cache.close()
    size = sum(p.stat().st_size for p in Path(folder).glob("shard-*.jsonl"))
    return {"seconds": time.perf_counter() - started, "bytes": size, "peak_rss_mb": peak_rss_mb()}


def child_cache_load(folder: str, entries: int, lookups: int) -> dict:
    """Open the cache (its index built), then read `lookups` random entries back (each line checked)."""
    from teachfit.store import ResultCache, content_hash

    baseline = peak_rss_mb()
    started = time.perf_counter()
    cache = ResultCache(Path(folder))
    opened = time.perf_counter() - started
    keys = [content_hash("bench", i) for i in random.Random(1).sample(range(entries), lookups)]
    started = time.perf_counter()
    found = cache.get_many(keys)
    read = time.perf_counter() - started
    assert all(value is not None for value in found) and cache.skipped_lines == {}
    return {"entries": len(cache), "open_seconds": opened, "lookups": lookups, "lookup_seconds": read,
            "index_mb": cache._index.nbytes / 2**20, "rss_before_mb": baseline, "peak_rss_mb": peak_rss_mb()}


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


def measure(size: int, work: Path, student: str, token_budget: int | None, threads: int, prefetch: bool = True) -> dict:
    data = work / f"zoo-{size}.parquet"
    if not data.exists():
        write_zoo(data, size)
    row: dict = {"pairs": size}
    out, cache = work / f"scores-{size}.parquet", work / f"cache-{size}"
    shutil.rmtree(cache, ignore_errors=True)  # the first run computes every pair
    args = (str(data), student, str(out), str(cache), str(token_budget or 0), str(threads), "1" if prefetch else "0")
    cold, warm = in_child("score", *args), in_child("score", *args)
    row |= {"lm": cold, "cached": warm, "prefetch": prefetch}
    row["rank"] = in_child("cli", "rank", str(out), "--json-out", str(work / f"ranking-{size}.json"))
    row["select"] = in_child("cli", "select", str(out), "--by", "reward", "--out", str(work / f"selection-{size}.jsonl"))
    return row


def table(rows: list[dict]) -> str:
    """The measurements as Markdown tables (a row with "cache" is the cache-loading step)."""
    sizes, caches = [r for r in rows if "pairs" in r], [r["cache"] for r in rows if "cache" in r]
    lines = ["| pairs | LM path pairs/s | LM path s (CPU s) | peak RSS MB | beyond the loaded model MB "
             "| cached re-run s (peak RSS MB) | rank s (RSS MB) | select --by reward s (RSS MB) |", "|---" * 8 + "|"]
    label = lambda r: f"{r['pairs']:,}" + ("" if r.get("prefetch", True) else " (no prefetch)")  # noqa: E731
    for r in sizes:
        lm, cached, rank, select = r["lm"], r["cached"], r["rank"], r["select"]
        lines.append(f"| {label(r)} | {r['pairs'] / lm['seconds']:,.0f} | {lm['seconds']:.1f} ({lm.get('cpu_seconds', 0):.1f}) "
                     f"| {lm['peak_rss_mb']:,.0f} | {lm['peak_rss_mb'] - lm.get('rss_after_load_mb', 0):,.0f} "
                     f"| {cached['seconds']:.1f} ({cached['peak_rss_mb']:,.0f}) | {rank['seconds']:.1f} ({rank['peak_rss_mb']:,.0f}) "
                     f"| {select['seconds']:.1f} ({select['peak_rss_mb']:,.0f}) |")
    lines += ["", "RSS over the cold run (MB at 10%, 25%, 50%, 75% and 99% of its time; the student loads first):", ""]
    lines += [f"- {label(r)}: " + ", ".join(f"{v:,.0f}" for v in r["lm"].get("rss_over_run_mb", [])) for r in sizes]
    lines += ["", "Where the time per pair goes (microseconds per pair; cold: empty cache, cached: the re-run). The main",
              "thread's parts add up to the total; the prefetch thread's (reading, hashing, the cache look-up and",
              "tokenizing of the next window) overlap the main thread's forward pass; 'wait': the main thread waiting for them:", "",
              "| pairs | run | " + " | ".join(PARTS) + " | total | prefetch thread: " + ", ".join(PARTS[1:5]) + " |",
              "|---" * (len(PARTS) + 4) + "|"]
    for r in sizes:
        for name, run in (("cold", r["lm"]), ("cached", r["cached"])):
            per_pair = lambda part, parts: f"{1e6 * parts.get(part, 0) / r['pairs']:,.0f}"  # noqa: E731
            background = ", ".join(per_pair(p, run.get("prefetch_parts", {})) for p in PARTS[1:5])
            lines.append(f"| {label(r)} | {name} | " + " | ".join(per_pair(p, run["parts"]) for p in PARTS)
                         + f" | {1e6 * run['seconds'] / r['pairs']:,.0f} | {background} |")
    if caches:
        lines += ["", "Opening a result cache (its index built from the shards) and reading entries back (each line checked):", "",
                  "| entries | shards | size GB | open s | index MB | peak RSS MB (before opening) | look-ups | look-up us each |",
                  "|---" * 8 + "|"]
        for c in caches:
            lines.append(f"| {c['entries']:,} | {c['shards']} | {c['bytes'] / 1e9:.2f} | {c['open_seconds']:.1f} | {c['index_mb']:,.0f} "
                         f"| {c['peak_rss_mb']:,.0f} ({c['rss_before_mb']:,.0f}) | {c['lookups']:,} "
                         f"| {1e6 * c['lookup_seconds'] / c['lookups']:,.0f} |")
    return "\n".join(lines)


def measure_cache(entries: int, shards: int, work: Path) -> dict:
    """Build (once, kept in `work`) a cache of `entries` results with the store's writer; open it."""
    folder = work / f"cache-{entries}-entries"
    built = folder / "built.json"
    if not built.exists():
        shutil.rmtree(folder, ignore_errors=True)
        built.parent.mkdir(parents=True)
        built.write_text(json.dumps(in_child("cache-build", str(folder), str(entries), str(shards))))
    report = in_child("cache-load", str(folder), str(entries), str(min(entries, 20_000)))
    build = json.loads(built.read_text())
    return report | {"shards": shards, "bytes": build["bytes"], "build_seconds": build["seconds"]}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--table":  # print the tables of a --json file again
        print(table(json.loads(Path(sys.argv[2]).read_text())))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        result_path, step, *args = sys.argv[2:]
        if step == "score":
            data, student, out, cache, budget, threads, *prefetch = args
            report = child_score(data, student, out, cache, int(budget) or None, int(threads), prefetch != ["0"])
        elif step == "cache-build":
            report = child_cache_build(args[0], int(args[1]), int(args[2]))
        elif step == "cache-load":
            report = child_cache_load(args[0], int(args[1]), int(args[2]))
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
    parser.add_argument("--no-prefetch", action="store_true",
                        help="score without the prefetch thread (each window read and tokenized, then computed): what it gains")
    parser.add_argument("--cache-entries", type=int, default=0,
                        help="also build (kept in --work) and open a result cache of this many entries (10000000: the issue's)")
    parser.add_argument("--cache-shards", type=int, default=10, help="shards of that cache (default 10)")
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",") if int(s)] if options.sizes is not None else sorted({20_000, options.max_pairs})
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(options.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        student = build_student(work / "student")
        rows = []
        for size in sizes:
            rows.append(measure(size, work, student, options.token_budget, options.threads, not options.no_prefetch))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if options.cache_entries:
            rows.append({"cache": measure_cache(options.cache_entries, options.cache_shards, work)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(table(rows))
        if options.json:
            Path(options.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
