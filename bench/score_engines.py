"""The engine rows of bench/score_throughput.py (`--engines`, `--packaged`): torch fp32, torch bf16,
CTranslate2 fp32 and int8 on the same pairs, each in its own process (score_throughput's children).

  engine rows   GPT-2 size, random weights, score_throughput's pairs, CAR only (loss(y|x), no ranks:
                CTranslate2's score_batch): tokens/s, ratio to torch fp32, |loss - torch fp32 loss|
                in nats per token (the largest over pairs, and that of the mean over pairs)
  packaged      the demo's 96 shipped pairs (4 teachers x 24) under packaged:gemma3-270m, scored by
                `teachfit.score.engine.score_files` with each engine (CAR only; for CTranslate2 also the
                demo's default columns: RSR too, the forward_batch path): the same loss figures against
                torch fp32, response tokens/s, the CAR ranking of the 4 teachers (beta 3, judge_reward)

A child sets torch's threads from TEACHFIT_BENCH_THREADS (CTranslate2 uses as many as torch).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

ENGINES = {"torch_fp32": ("torch", "float32"), "torch_bf16": ("torch", "bfloat16"),
           "ct2_fp32": ("ctranslate2", "float32"), "ct2_int8": ("ctranslate2", "int8")}


def _threads() -> None:
    import torch

    if os.environ.get("TEACHFIT_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["TEACHFIT_BENCH_THREADS"]))


def engine_pass(folder: Path, data: Path, name: str) -> dict:
    """tokens/s of one engine's CAR-only pass over score_throughput's pairs, and its per-pair losses."""
    from score_throughput import encoded_pairs

    from teachfit.forward import BatchPlan, response_nll
    from teachfit.models import load
    from teachfit.models.spec import ModelSpec
    from teachfit.score.ctranslate2 import ct2_response_nll, load_ct2

    _threads()
    engine, kind = ENGINES[name]
    started = time.perf_counter()
    if engine == "torch":
        loaded = load("causal_lm", f"hf:{folder}", dtype=kind, device="cpu")
    else:
        loaded = load_ct2(ModelSpec.parse(f"hf:{folder}"), kind)
    load_seconds = time.perf_counter() - started
    encoded = encoded_pairs(loaded.tokenizer, data, alone=False)
    started = time.perf_counter()
    if engine == "torch":
        nll = response_nll(loaded.model, loaded.tokenizer, encoded, BatchPlan(), "cpu")
    else:
        nll = ct2_response_nll(loaded, encoded, BatchPlan(), ranks=False)
    return {"tokens": sum(len(e.input_ids) for e in encoded), "seconds": time.perf_counter() - started,
            "load_seconds": load_seconds, "losses": [s / n for s, n, *_ in nll]}


def packaged_pass(name: str, metrics: str) -> dict:
    """The demo's pairs under packaged:gemma3-270m with one engine: losses, tokens/s, CAR order."""
    from teachfit.config import ScoreConfig
    from teachfit.demo import stored_responses
    from teachfit.files import read_table
    from teachfit.rank import rank_teachers
    from teachfit.score.engine import score_files

    _threads()
    engine, kind = ENGINES[name]
    torch_engine = engine == "torch"
    config = ScoreConfig(engine=engine, dtype=kind if torch_engine else "float32",
                         compute_type="float32" if torch_engine else kind,
                         reward_column="judge_reward", metrics=metrics.split(","), max_length=2048, progress=False)
    with tempfile.TemporaryDirectory(prefix="teachfit-engines-") as work:
        out = Path(work) / "scores.parquet"
        started = time.perf_counter()  # model load (and a first conversion) included
        meta = score_files(stored_responses(), out, "packaged:gemma3-270m", config, cache_dir=Path(work) / "cache")
        seconds = time.perf_counter() - started
        rows, _ = read_table(out)
    ranking = rank_teachers(rows, beta=3.0, n_bootstrap=0)
    return {"seconds": seconds, "tokens": sum(r["n_response_tokens"] for r in rows), "scorer": meta["scorers"][0],
            "losses": [r["loss_self"] for r in sorted(rows, key=lambda r: (r["teacher"], r["id"]))],
            "car_order": [r["teacher"] for r in ranking.rows], "car": [round(r["car"], 4) for r in ranking.rows]}


# torch computes ranks either way, so its CAR-only losses are its default-columns losses too
PACKAGED_RUNS = [(name, "car") for name in ENGINES] + [("ct2_fp32", "default"), ("ct2_int8", "default")]
DEFAULT_METRICS = "car,reward,ppl_self,rsr_self,length"  # the demo's columns (score.stage.default_metrics)
METHODS = {name: (lambda f, d, name=name: engine_pass(f, d, name)) for name in ENGINES} | {
    f"packaged_{name}_{tag}": (lambda f, d, name=name, tag=tag: packaged_pass(name, "car" if tag == "car" else DEFAULT_METRICS))
    for name, tag in PACKAGED_RUNS}


def agreement(base: list[float], other: list[float]) -> str:
    """Largest |difference| of per-pair losses, and |difference| of their means, in nats per token."""
    largest = max(abs(a - b) for a, b in zip(base, other))
    mean = abs(sum(base) / len(base) - sum(other) / len(other))
    return f"{largest:.1e} | {mean:.1e}"


def engine_table(results: dict[str, dict]) -> None:
    """The markdown rows of `--engines`."""
    base = results["torch_fp32"]
    print("\n| engine (CAR only, GPT-2 size) | tokens/s | vs torch fp32 | max abs loss diff | diff of mean | load s |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(f"| {name} | {rate:.0f} | {rate / (base['tokens'] / base['seconds']):.2f}x | "
              f"{agreement(base['losses'], r['losses'])} | {r['load_seconds']:.1f} |")


def packaged_table(results: dict[str, dict]) -> None:
    """The markdown rows of `--packaged`."""
    base = results["packaged_torch_fp32_car"]
    for tag in ("car", "default"):
        print(f"\n| packaged:gemma3-270m, demo pairs, --metrics {tag} | whole score_files s | response tokens/s | "
              "max abs loss diff | diff of mean | CAR order (beta 3) |\n|---|---|---|---|---|---|")
        for name in ENGINES:
            r = results.get(f"packaged_{name}_{tag}")
            if r is None:
                continue
            print(f"| {name} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} | "
                  f"{agreement(base['losses'], r['losses'])} | {' > '.join(r['car_order'])} |")
        orders = {name: results[f'packaged_{name}_{tag}']['car_order'] for name in ENGINES
                  if f"packaged_{name}_{tag}" in results} | {"torch_fp32": base["car_order"]}
        print("CAR order the same under every engine: " + str(len({tuple(o) for o in orders.values()}) == 1))
