"""Scoring throughput: a naive one-pair-at-a-time HF loop vs teachfit, same pairs, same model.

Model: GPT-2 size (768 wide, 12 layers, vocabulary 50257), random weights, built here. Pairs:
instruction 40-160 tokens, response 100-700 tokens (realistic SFT lengths). Both methods compute
loss(y|x) and loss(y) for every pair. Each method runs in its own process so that peak RSS is
its own. Prints tokens/s of both, the ratio, the fraction of this CPU's bf16 matmul limit
(measured in the same run), peak RSS, and peak RSS of teachfit's streaming scorer at N and 4N
pairs (flat memory).

    .venv/bin/python bench/score_throughput.py [--pairs 32] [--rsr]   (--rsr: only the cost of RSR rank counting)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the model learns to answer questions about science history code and math with short clear "
         "steps while the student copies the teacher style because compatible data is easier to fit").split()


def build(folder: Path) -> None:
    """GPT-2-size random model + a small trained tokenizer, saved as safetensors."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from conftest import build_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def make_pairs(path: Path, n: int, seed: int = 0) -> None:
    """n JSONL pairs with realistic, varied lengths."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(n):
            instruction = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160)))
            response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 700)))
            handle.write(json.dumps({"id": str(i), "instruction": instruction, "response": response}) + "\n")


def naive(folder: Path, data: Path) -> dict:
    """One pair at a time, full logits, fp32: what a first script does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teachfit.records import read_pairs
    from teachfit.template import encode_pair, encode_response_alone, ensure_chat_template

    tok = AutoTokenizer.from_pretrained(folder)
    ensure_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pairs = list(read_pairs([data]))
    encoded = [e for p in pairs for e in (encode_pair(tok, p.instruction, p.response, 1024),
                                          encode_response_alone(tok, p.response, 1024))]
    tokens, losses = 0, []
    started = time.perf_counter()
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids])
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            targets = ids[0, e.response_start:]
            losses.append(-logprobs[e.response_start - 1 : -1].gather(1, targets[:, None]).mean().item())
            tokens += len(e.input_ids)
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "losses": losses}


def teachfit_batched(folder: Path, data: Path, ranks: bool = False) -> dict:
    """teachfit's scorer: length-sorted batches under a token budget, bf16, head on response positions
    (with `ranks`, also RSR's clipped token ranks, counted on the same LM-head chunks)."""
    from teachfit.forward import BatchPlan, response_nll
    from teachfit.models import load
    from teachfit.records import read_pairs
    from teachfit.template import encode_pair, encode_response_alone, ensure_chat_template

    loaded = load("causal_lm", f"hf:{folder}", dtype="auto")
    ensure_chat_template(loaded.tokenizer)
    pairs = list(read_pairs([data]))
    encoded = [e for p in pairs for e in (encode_pair(loaded.tokenizer, p.instruction, p.response, 1024),
                                          encode_response_alone(loaded.tokenizer, p.response, 1024))]
    started = time.perf_counter()
    nll = response_nll(loaded.model, loaded.tokenizer, encoded, BatchPlan(8192, 64), loaded.device, ranks=ranks)
    seconds = time.perf_counter() - started
    return {"tokens": sum(len(e.input_ids) for e in encoded), "seconds": seconds,
            "losses": [s / n for s, n, *_ in nll], "dtype": loaded.dtype}


def rsr_cost(folder: Path, data: Path, rounds: int = 2) -> dict:
    """response_nll without and with RSR's rank counting, alternated on one loaded model (seconds per run)."""
    from teachfit.forward import BatchPlan, response_nll
    from teachfit.models import load
    from teachfit.records import read_pairs
    from teachfit.template import encode_pair, encode_response_alone, ensure_chat_template

    loaded = load("causal_lm", f"hf:{folder}", dtype="auto")
    ensure_chat_template(loaded.tokenizer)
    pairs = list(read_pairs([data]))
    encoded = [e for p in pairs for e in (encode_pair(loaded.tokenizer, p.instruction, p.response, 1024),
                                          encode_response_alone(loaded.tokenizer, p.response, 1024))]
    times: dict = {"plain": [], "ranks": []}
    for _ in range(rounds):
        for name in times:
            started = time.perf_counter()
            response_nll(loaded.model, loaded.tokenizer, encoded, BatchPlan(8192, 64), loaded.device, ranks=name == "ranks")
            times[name].append(time.perf_counter() - started)
    return times | {"tokens": sum(len(e.input_ids) for e in encoded), "dtype": loaded.dtype}


def streaming(folder: Path, data: Path) -> dict:
    """The full `score_files` path (reading, cache, Parquet writing) over a file."""
    from teachfit.score import ScoreOptions, score_files

    out = Path(tempfile.mkdtemp()) / "s.parquet"
    started = time.perf_counter()
    score_files([data], out, f"hf:{folder}", options=ScoreOptions(max_length=1024, token_budget=8192, window=64),
                show_progress=False)
    return {"seconds": time.perf_counter() - started}


def bf16_peak() -> float:
    """GFLOP/s of a large bf16 matmul on this CPU (the limit scoring can approach)."""
    import torch

    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    started, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return 2 * 2048 ** 3 * reps / (time.perf_counter() - started) / 1e9


def child(method: str, folder: str, data: str) -> None:
    """Run one method and print its result with this process's peak RSS."""
    methods = {"naive": naive, "teachfit": teachfit_batched, "streaming": streaming,
               "rsr_cost": rsr_cost}
    result = methods[method](Path(folder), Path(data))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_child(method: str, folder: Path, data: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, str(folder), str(data)],
                         capture_output=True, text=True, check=True, env=os.environ | {"TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--child", nargs=3)
    parser.add_argument("--rsr", action="store_true",
                        help="only the cost of RSR: teachfit's scorer with and without rank counting, alternated, 2 runs each")
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    work = Path(tempfile.mkdtemp(prefix="teachfit-bench-"))
    build(work / "model")
    make_pairs(work / "pairs.jsonl", args.pairs)
    if args.rsr:
        result = run_child("rsr_cost", work / "model", work / "pairs.jsonl")
        print(f"pairs: {args.pairs} ({result['tokens']} tokens incl. loss(y) sequences), model: GPT-2 size, "
              f"dtype {result['dtype']}, one process, runs alternated")
        for name, label in (("plain", "loss only      "), ("ranks", "loss + RSR rank")):
            rates = [result["tokens"] / s for s in result[name]]
            print(f"teachfit, {label}: {max(rates):8.0f} tokens/s best  (runs: {', '.join(f'{r:.0f}' for r in rates)})")
        print(f"cost of rank counting: {min(result['ranks']) / min(result['plain']) - 1:+.1%} time (best vs best)")
        return
    make_pairs(work / "pairs4x.jsonl", 4 * args.pairs, seed=1)
    base = run_child("naive", work / "model", work / "pairs.jsonl")
    fast = run_child("teachfit", work / "model", work / "pairs.jsonl")
    small = run_child("streaming", work / "model", work / "pairs.jsonl")
    large = run_child("streaming", work / "model", work / "pairs4x.jsonl")
    peak = bf16_peak()
    non_embedding = 12 * 12 * 768 ** 2  # 12 layers x (4 attention + 8 MLP) x d^2 parameters
    gap = max(abs(a - b) for a, b in zip(base["losses"], fast["losses"]))
    rate_naive = base["tokens"] / base["seconds"]
    rate_fast = fast["tokens"] / fast["seconds"]
    body_flops = 2 * non_embedding * fast["tokens"]  # 2 FLOPs per parameter per token
    print(f"pairs: {args.pairs} ({fast['tokens']} tokens incl. loss(y) sequences), model: GPT-2 size, dtype {fast['dtype']}")
    print(f"naive HF loop   : {rate_naive:8.0f} tokens/s   peak RSS {base['peak_rss_mb']:7.0f} MB")
    print(f"teachfit        : {rate_fast:8.0f} tokens/s   peak RSS {fast['peak_rss_mb']:7.0f} MB")
    print(f"ratio           : {rate_fast / rate_naive:.2f}x   (max |loss difference| {gap:.4f} nats, bf16 vs fp32)")
    print(f"bf16 matmul peak: {peak:.0f} GFLOP/s; teachfit body FLOPs reach {body_flops / fast['seconds'] / 1e9:.0f} "
          f"GFLOP/s = {body_flops / fast['seconds'] / 1e9 / peak:.0%} of it (LM head FLOPs not counted)")
    print(f"streaming score : peak RSS {small['peak_rss_mb']:.0f} MB at {args.pairs} pairs, "
          f"{large['peak_rss_mb']:.0f} MB at {4 * args.pairs} pairs (ratio {large['peak_rss_mb'] / small['peak_rss_mb']:.2f})")


if __name__ == "__main__":
    main()
