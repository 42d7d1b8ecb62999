"""Scoring throughput: a naive one-pair-at-a-time HF loop vs teachfit, same pairs, same model.

Model: GPT-2 size (768 wide, 12 layers, vocabulary 50257), random weights, built here. Pairs
(`--lengths`): `longtail` (default) has instructions of 40-160 tokens and responses log-normal
around 300 tokens with a tail to 1,500 (what real SFT data looks like); `uniform` has responses of
100-700 tokens. Every method runs in its own process, so peak RSS is its own. Rows:

  naive, all columns    loss(y|x) and loss(y), full logits, fp32, one pair at a time
  naive, CAR only       loss(y|x) only
  teachfit, all columns response_nll: length-sorted batches, LM head only on response positions
  teachfit, CAR only    the same with `--metrics car` (no loss(y) pass)
  teachfit, compiled    (--compile) the body under torch.compile; its warm-up is reported apart

then the command-line path as a user meets it (start-up, model load, reading, cache, Parquet
included): the naive loop as a script vs `teachfit score` with and without `--metrics car`; where
teachfit's time goes (body, LM head, log-softmax, the rest); its speed by tokens per batch; and the
fraction of this CPU's matmul limit (fp32 and bf16, measured in the same run) that the body reaches.
`--engines` runs only the engine rows instead (torch fp32 / bf16, CTranslate2 fp32 / int8: tokens/s and
loss agreement); `--packaged` adds them on the packaged Gemma 3 270M student and the demo's pairs, with
the CAR ranking under each engine (bench/score_engines.py); `--threads N` sets the threads of both.

    .venv/bin/python bench/score_throughput.py [--pairs 48] [--lengths longtail|uniform] [--compile]
    .venv/bin/python bench/score_throughput.py --engines [--packaged] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from score_engines import ENGINES, METHODS as ENGINE_METHODS, engine_table, packaged_table

WORDS = ("the model learns to answer questions about science history code and math with short clear "
         "steps while the student copies the teacher style because compatible data is easier to fit").split()
NON_EMBEDDING = 12 * 12 * 768 ** 2  # GPT-2 size: 12 layers x (4 attention + 8 MLP) x d^2 parameters
HEAD = 768 * 50257


def build(folder: Path) -> None:
    """GPT-2-size random model + a small trained tokenizer, saved as safetensors."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from conftest import build_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    # padded to the model's 50257 rows: CTranslate2's converter takes the vocabulary from the tokenizer
    tokenizer.add_tokens([f"<unused{i}>" for i in range(50257 - len(tokenizer))])
    config = GPT2Config(vocab_size=50257, n_positions=2048, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


TOKENS_PER_WORD = 3.6  # the bench's small tokenizer splits these words into ~3.6 tokens each (measured)


def response_tokens(rng: random.Random, lengths: str) -> int:
    """Tokens in one response: log-normal around 300 clipped to [20, 1500], or uniform 100-700."""
    if lengths == "uniform":
        return rng.randint(100, 700)
    return int(min(1500, max(20, rng.lognormvariate(math.log(300), 0.6))))


def words(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens of text."""
    return " ".join(rng.choice(WORDS) for _ in range(max(1, round(tokens / TOKENS_PER_WORD))))


def make_pairs(path: Path, n: int, lengths: str, seed: int = 0) -> None:
    """n JSONL pairs (with a reward field, so the CLI computes CAR without a reward model)."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(n):
            instruction = words(rng, rng.randint(40, 160))
            response = words(rng, response_tokens(rng, lengths))
            handle.write(json.dumps({"id": str(i), "instruction": instruction, "response": response,
                                     "reward": rng.uniform(1, 9)}) + "\n")


def encoded_pairs(tokenizer, data: Path, alone: bool) -> list:
    """teachfit's encoding of each pair (and of each response alone when `alone`), max 2048 tokens."""
    from teachfit.files import read_pairs
    from teachfit.template import encode_pair, encode_response_alone, ensure_chat_template

    ensure_chat_template(tokenizer)
    pairs = list(read_pairs([data]))
    conditional = [encode_pair(tokenizer, p.instruction, p.response, 2048) for p in pairs]
    return conditional + ([encode_response_alone(tokenizer, p.response, 2048) for p in pairs] if alone else [])


def naive(folder: Path, data: Path, alone: bool = True) -> dict:
    """One pair at a time, full logits, fp32: what a first script does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    encoded = encoded_pairs(tokenizer, data, alone)
    losses = []
    started = time.perf_counter()
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids])
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            targets = ids[0, e.response_start:]
            losses.append(-logprobs[e.response_start - 1 : -1].gather(1, targets[:, None]).mean().item())
    return {"tokens": sum(len(e.input_ids) for e in encoded), "seconds": time.perf_counter() - started,
            "losses": losses}


def teachfit_batched(folder: Path, data: Path, alone: bool = True, compile_body: bool = False) -> dict:
    """teachfit's response_nll (optionally with the body compiled: its first pass is the warm-up)."""
    from teachfit.forward import BatchPlan, compiled, response_nll
    from teachfit.models import load

    loaded = load("causal_lm", f"hf:{folder}", dtype="auto")
    encoded = encoded_pairs(loaded.tokenizer, data, alone)
    model, warmup = loaded.model, 0.0
    if compile_body:
        model = compiled(model)
        started = time.perf_counter()
        response_nll(model, loaded.tokenizer, encoded, BatchPlan(), loaded.device)
        warmup = time.perf_counter() - started
    started = time.perf_counter()
    nll = response_nll(model, loaded.tokenizer, encoded, BatchPlan(), loaded.device, ranks=True)
    return {"tokens": sum(len(e.input_ids) for e in encoded), "seconds": time.perf_counter() - started,
            "losses": [s / n for s, n, *_ in nll], "dtype": loaded.dtype, "warmup_seconds": warmup}


def budgets(folder: Path, data: Path) -> dict:
    """tokens/s of teachfit's CAR-only pass at several token budgets (tokens per batch): where the
    CPU default of forward.DEFAULT_TOKEN_BUDGET comes from."""
    from teachfit.forward import BatchPlan, response_nll
    from teachfit.models import load

    loaded = load("causal_lm", f"hf:{folder}", dtype="auto")
    encoded = encoded_pairs(loaded.tokenizer, data, False)
    rates = {}
    for budget in (512, 2048, 8192):
        started = time.perf_counter()
        response_nll(loaded.model, loaded.tokenizer, encoded, BatchPlan(budget), loaded.device)
        rates[str(budget)] = sum(len(e.input_ids) for e in encoded) / (time.perf_counter() - started)
    return {"tokens_per_second": rates}


def breakdown(folder: Path, data: Path) -> dict:
    """Seconds in the body, the LM head matmul and the log-softmax during one teachfit run (all
    columns); the rest is Python, padding and bookkeeping."""
    import torch

    from teachfit import forward
    from teachfit.models import load

    loaded = load("causal_lm", f"hf:{folder}", dtype="auto")
    encoded = encoded_pairs(loaded.tokenizer, data, True)
    spent = {"body": 0.0, "head": 0.0, "softmax": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            result = function(*args, **kwargs)
            spent[name] += time.perf_counter() - started
            return result
        return wrapper

    forward.hidden_states = timed("body", forward.hidden_states)
    forward.head_logits = timed("head", forward.head_logits)
    torch.log_softmax = timed("softmax", torch.log_softmax)
    started = time.perf_counter()
    forward.response_nll(loaded.model, loaded.tokenizer, encoded, forward.BatchPlan(), loaded.device, ranks=True)
    total = time.perf_counter() - started
    lengths = sorted(len(e.input_ids) for e in encoded[: len(encoded) // 2])
    return spent | {"total": total, "tokens": sum(len(e.input_ids) for e in encoded),
                    "median_pair_tokens": lengths[len(lengths) // 2], "max_pair_tokens": lengths[-1]}


def command_line(folder: Path, data: Path, metrics: str) -> dict:
    """`teachfit score` as a user runs it (wall time of the whole command)."""
    out = folder.parent / f"cli-{metrics}" / "scores.parquet"
    command = [sys.executable, "-m", "teachfit.cli", "score", str(data), "--student", f"hf:{folder}",
               "--reward-column", "reward", "--metrics", metrics, "--out", str(out), "--no-progress"]
    env = os.environ | {"TEACHFIT_CACHE": str(out.parent / "cache")}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    result = {"seconds": time.perf_counter() - started}
    print(f"[teachfit score --metrics {metrics}] {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def matmul_peak(dtype_name: str, seconds: float = 5.0) -> float:
    """GFLOP/s of a 1024-square matmul in this dtype on this CPU (the limit scoring can approach),
    repeated for about `seconds` (a CPU without native bf16 emulates it slowly: bounded by time)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    a @ b
    started, reps = time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    return 2 * 1024 ** 3 * reps / (time.perf_counter() - started) / 1e9


METHODS = {"naive": lambda f, d: naive(f, d), "naive_car": lambda f, d: naive(f, d, alone=False),
           "teachfit": lambda f, d: teachfit_batched(f, d), "teachfit_car": lambda f, d: teachfit_batched(f, d, alone=False),
           "teachfit_compiled": lambda f, d: teachfit_batched(f, d, compile_body=True), "breakdown": breakdown, "budgets": budgets,
           "peaks": lambda f, d: {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}}
METHODS.update(ENGINE_METHODS)


def child(method: str, folder: str, data: str) -> None:
    """Run one method and print its result with this process's peak RSS."""
    result = METHODS[method](Path(folder), Path(data))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_child(method: str, folder: Path, data: Path) -> dict:
    """A method in its own process; `wall` is the whole process, start-up and model load included."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", method, str(folder), str(data)],
                         capture_output=True, text=True, check=True, env=os.environ | {"TQDM_DISABLE": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1]) | {"wall": time.perf_counter() - started}
    shown = {k: v for k, v in result.items() if k != "losses"}
    print(f"[{method}] {json.dumps(shown)}", file=sys.stderr, flush=True)  # each result as it comes (long runs)
    return result


def tolerant_child(method: str, folder: Path, data: Path) -> dict | None:
    """run_child, or None (and the child's last error line) when it fails: the other rows still come."""
    try:
        return run_child(method, folder, data)
    except subprocess.CalledProcessError as error:
        print(f"[{method}] failed: {(error.stderr or '').strip().splitlines()[-1:]}", file=sys.stderr, flush=True)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--lengths", choices=("longtail", "uniform"), default="longtail")
    parser.add_argument("--compile", action="store_true", help="also time the body under torch.compile")
    parser.add_argument("--engines", action="store_true", help="only the engine rows (torch vs CTranslate2)")
    parser.add_argument("--packaged", action="store_true", help="with --engines: also on the packaged student")
    parser.add_argument("--threads", type=int, help="torch's (and CTranslate2's) threads in each child")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.threads:
        os.environ["TEACHFIT_BENCH_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="teachfit-bench-") as work:
        run(Path(work), args)


def run(work: Path, args: argparse.Namespace) -> None:
    """Every method on the same model and pairs, then the tables."""
    build(work / "model")
    data = work / "pairs.jsonl"
    make_pairs(data, args.pairs, args.lengths)
    if args.engines:
        print(f"pairs: {args.pairs} ({args.lengths}), threads: {args.threads or 'torch default'}, {os.cpu_count()} cores")
        engine_table({name: run_child(name, work / "model", data) for name in ENGINES})
        if args.packaged:
            packaged_table({name: result for name in ENGINE_METHODS if name.startswith("packaged_")
                            for result in [tolerant_child(name, work / "model", data)] if result})
        return
    names = ["naive", "naive_car", "teachfit", "teachfit_car"] + (["teachfit_compiled"] if args.compile else [])
    results = {name: run_child(name, work / "model", data) for name in names}
    split = run_child("breakdown", work / "model", data)
    per_budget = run_child("budgets", work / "model", data)["tokens_per_second"]
    cli = {m: command_line(work / "model", data, m) for m in ("all", "car")}
    peaks = run_child("peaks", work / "model", data)
    base, full = results["naive"], results["teachfit"]
    print(f"pairs: {args.pairs} ({args.lengths}; pair tokens median {split['median_pair_tokens']}, max "
          f"{split['max_pair_tokens']}), model: GPT-2 size, teachfit dtype {full['dtype']}, torch threads "
          f"{os.cpu_count()} cores")
    print("| method | pairs/s | tokens/s | vs naive (same columns) | peak RSS MB |\n|---|---|---|---|---|")
    labels = {"naive": "naive, all columns", "naive_car": "naive, CAR only", "teachfit": "teachfit, all columns",
              "teachfit_car": "teachfit, CAR only (--metrics car)", "teachfit_compiled": "teachfit, compiled body"}
    for name in names:
        r = results[name]
        same = results["naive_car" if name.endswith("_car") else "naive"]
        print(f"| {labels[name]} | {args.pairs / r['seconds']:.2f} | {r['tokens'] / r['seconds']:.0f} | "
              f"{same['seconds'] / r['seconds']:.2f}x | {r['peak_rss_mb']:.0f} |")
    if args.compile:
        print(f"compile warm-up: {results['teachfit_compiled']['warmup_seconds']:.0f} s")
    gap = max(abs(a - b) for a, b in zip(base["losses"], full["losses"]))
    print(f"max |loss difference| teachfit vs naive: {gap:.2e} nats")
    print(f"CAR only vs naive all columns: {base['seconds'] / results['teachfit_car']['seconds']:.2f}x pairs/s")
    print("\ncommand line, whole command (start-up, model load, reading, cache, Parquet included):")
    print(f"| naive script, all columns | {base['wall']:.1f} s |\n| naive script, CAR only | {results['naive_car']['wall']:.1f} s |")
    for metrics, r in cli.items():
        same = base if metrics == "all" else results["naive_car"]
        print(f"| teachfit score --metrics {metrics} | {r['seconds']:.1f} s ({same['wall'] / r['seconds']:.2f}x) |")
    print("\nteachfit CAR only, tokens/s by tokens per batch: " + ", ".join(
        f"{budget}: {rate:.0f}" for budget, rate in per_budget.items()))
    rest = split["total"] - split["body"] - split["head"] - split["softmax"]
    print("\nwhere teachfit's time goes (all columns): " + ", ".join(
        f"{k} {split[k]:.1f} s ({split[k] / split['total']:.0%})" for k in ("body", "head", "softmax"))
          + f", the rest {rest:.1f} s ({rest / split['total']:.0%})")
    body_rate = 2 * NON_EMBEDDING * split["tokens"] / split["body"] / 1e9
    limit = max(peaks["float32"], peaks["bfloat16"])  # bf16 is the limit only where the CPU has it natively
    print(f"matmul limit here: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.1f} GFLOP/s; the body "
          f"runs at {body_rate:.0f} GFLOP/s = {body_rate / limit:.0%} of the faster one (attention FLOPs not counted)")


if __name__ == "__main__":
    main()
