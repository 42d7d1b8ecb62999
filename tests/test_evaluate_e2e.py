"""`teachfit evaluate` end to end against a real judge server on 127.0.0.1 (llama-cpp-python's
server with the packaged SmolLM2 GGUF): answers, both styles, position swaps, cache, garbage."""
import json
import subprocess
import sys

import pytest

from conftest import Server, write_pairs
from teachfit.config import EvaluateConfig
from teachfit.evaluate.bench import load_bench
from teachfit.evaluate.pairwise import Judgments, judge_arena_hard, run_evaluation
from teachfit.evaluate.judging import JudgeConfig
from teachfit.evaluate.pairwise import load_judge

pytestmark = pytest.mark.packaged("llama_cpp.server.app")  # the packaged SmolLM2 behind llama.cpp's server


@pytest.fixture(scope="module")
def judge_server():
    server = Server()
    server.start()
    yield server
    server.stop()


def bench_files(tmp_path, n=4):
    prompts = write_pairs(tmp_path / "bench.jsonl", [{"id": f"b{i}", "instruction": f"Name a fruit, number {i}."}
                                                    for i in range(n)])
    baseline = write_pairs(tmp_path / "baseline.jsonl", [{"id": f"b{i}", "output": "Apple."} for i in range(n)])
    return str(prompts), str(baseline)


def test_evaluate_end_to_end_and_cached_rerun(tmp_path, judge_server, tiny_chatml):
    prompts, baseline = bench_files(tmp_path)
    judge = f"openai:smol@{judge_server.url}"
    out = tmp_path / "eval"
    config = EvaluateConfig(model=f"hf:{tiny_chatml}", judge=judge, bench=prompts, baseline=baseline, max_new_tokens=6,
                            concurrency=2, dtype="float32", progress=False)
    report = run_evaluation(config, out, labels={"student": "tiny", "teacher": "t1"})
    r = report["results"]
    assert r["n_ae2"] + r["unparsable_ae2"] == 4 and r["n_ah"] + r["unparsable_ah"] == 4
    assert r["unparsable_ah"] == 0  # the grammar holds the judge to a valid verdict
    assert 0 <= r["ae2_wr"] <= 100 and 0 <= r["ah_wr"] <= 100
    assert r["ap"] == pytest.approx((r["ae2_lc"] + r["ah_wr"]) / 2)
    ah = [json.loads(l) for l in (out / "judgments").glob("*arena_hard.jsonl").__next__().open()]
    assert all([g["model_position"] for g in row["games"]] == ["B", "A"] for row in ah)  # both orders
    ae2 = [json.loads(l) for l in next((out / "judgments").glob("*alpaca_eval.jsonl")).open()]
    assert {row["model_position"] for row in ae2} <= {"A", "B"}
    results = (out / "results.csv").read_text().splitlines()
    assert results[0].startswith("student,teacher,model,bench") and len(results) == 2
    again = run_evaluation(config, out, labels={"student": "tiny", "teacher": "t1"})
    assert again["results"]["judge_seconds"] == 0  # every judgment came from the cache
    assert again["results"]["ah_wr"] == r["ah_wr"]
    assert len((out / "results.csv").read_text().splitlines()) == 2  # the row was replaced, not added


def test_garbage_answers_are_retried_counted_and_not_cached(tmp_path, judge_server):
    prompts, baseline = bench_files(tmp_path, 2)
    items, _ = load_bench(prompts)
    from teachfit.evaluate.bench import attach_baseline
    attach_baseline(items, baseline)
    config = JudgeConfig.load("arena_hard")
    config.max_tokens, config.retries = 1, 1  # one free token cannot hold "[[A>B]]"
    judge = load_judge(f"openai:smol@{judge_server.url}", constraint="none")
    rows = judge_arena_hard(items, {i.id: "Banana." for i in items}, Judgments(judge, config, tmp_path / "cache"))
    games = [g for row in rows for g in row["games"]]
    assert all(g["verdict"] is None and g["attempts"] == 2 and len(g["unparsable"]) == 2 for g in games)
    assert not list((tmp_path / "cache").rglob("shard-*.jsonl")) or all(
        not s.read_text() for s in (tmp_path / "cache").rglob("shard-*.jsonl"))


def test_cli_evaluate(tmp_path, judge_server, tiny_chatml):
    prompts, baseline = bench_files(tmp_path, 2)
    out = subprocess.run([sys.executable, "-m", "teachfit.cli", "evaluate", "--model", f"hf:{tiny_chatml}",
                          "--judge", f"openai:smol@{judge_server.url}", "--bench", prompts, "--baseline", baseline,
                          "--out", str(tmp_path / "e"), "--max-new-tokens", "4", "--dtype", "float32", "--no-progress",
                          "--student-name", "s", "--teacher-name", "t"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "AE2 WR" in out.stdout and "AP" in out.stdout


def test_local_gguf_judge_through_llama_cpp(tmp_path):
    """The same judging with a local GGUF judge (no server): logprob preferences and grammar verdicts."""
    prompts, baseline = bench_files(tmp_path, 2)
    items, _ = load_bench(prompts)
    from teachfit.evaluate.bench import attach_baseline
    from teachfit.evaluate.pairwise import judge_alpaca_eval
    attach_baseline(items, baseline)
    judge = load_judge("packaged:smollm2-135m-instruct", n_ctx=1024)
    answers = {i.id: "Banana." for i in items}
    ae2 = judge_alpaca_eval(items, answers, Judgments(judge, JudgeConfig.load("alpaca_eval"), tmp_path / "c"))
    assert all(0.0 <= row["preference"] <= 1.0 for row in ae2)
    ah = judge_arena_hard(items, answers, Judgments(judge, JudgeConfig.load("arena_hard"), tmp_path / "c"))
    assert all(g["verdict"] in ("A>>B", "A>B", "A=B", "B>A", "B>>A") for row in ah for g in row["games"])
    again = judge_arena_hard(items, answers, Judgments(judge, JudgeConfig.load("arena_hard"), tmp_path / "c"))
    assert all(g["cached"] for row in again for g in row["games"])
