"""The token and cost ledger (teachfit.ledger): totals per (stage, model) from what the stages
wrote, checked against counts made here from the same files; a resumed run counts each answer
once; price arithmetic; bad price tables; the dry run's estimate for a tiny study."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_pairs
from fake_openai_server import FakeServer, completion
from teachfit.config import EvaluateConfig, GenerateConfig
from teachfit.generate import run_generate
from teachfit.ledger import Price, ledger_line, price_of, read_prices, tally, write_ledger
from teachfit.pipeline import plan_text, run_experiment
from teachfit.records import InputError
from teachfit.run import RunDir
from teachfit.tokens import token_length

TEXTS = ["Write a short poem about the sea.", "Explain recursion to a child.", "What is 2 + 2?",
         "List three fruits.", "Give me advice on learning to code."]


def instructions(folder: Path) -> Path:
    return write_pairs(folder / "instructions.jsonl", [{"id": f"i{k}", "instruction": t} for k, t in enumerate(TEXTS)])


def ledger_csv(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (root / "ledger.csv").open(newline="") as handle:
        return {(r["stage"], r["model"]): r for r in csv.DictReader(handle)}


def file_totals(path: Path) -> tuple[int, int, int]:
    """(answers, prompt tokens, completion tokens) summed over a dataset file, one line per answer."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return len(records), sum(r["prompt_tokens"] for r in records), sum(r["completion_tokens"] for r in records)


def test_generate_totals_match_the_files_and_a_resumed_run_counts_once(tmp_path, tiny_chatml):
    source, run = instructions(tmp_path), tmp_path / "run"
    spec = f"hf:{tiny_chatml}"
    config = GenerateConfig(instructions=[str(source)], teacher=[f"{spec}?name=g", f"{spec}?name=s&temperature=1.0&n=2"],
                            max_new_tokens=5, limit=3, out=str(run), dtype="float32", progress=False)
    first = run_generate(config, RunDir(run))
    assert first["ledger"][0]["requests"] == 3 * 1 + 3 * 2
    config.limit = None  # resume: only the missing instructions are answered
    stats = run_generate(config, RunDir(run))
    assert [s["already_done"] for s in stats["datasets"]] == [3, 6]
    n, tokens_in, tokens_out = (sum(x) for x in zip(*(file_totals(run / "responses" / f) for f in ("g.jsonl", "s.jsonl"))))
    assert n == 5 * 3  # 5 greedy + 5 x 2 samples, each once
    row = ledger_csv(run)[("generate", spec)]
    assert (int(row["requests"]), int(row["tokens_in"]), int(row["tokens_out"])) == (n, tokens_in, tokens_out)
    assert row["counted_by"] == "tokenizer" and "cost_usd" not in row
    assert 0 < tokens_out <= n * 5 and tokens_in > n  # at most max_new_tokens each; every prompt has tokens
    assert f"{n} requests, {tokens_in} in, {tokens_out} out" in ledger_line(stats["ledger"])

    # what a killed or retried run leaves in a file: a torn line, the same answer twice, a failed attempt
    path = run / "responses" / "g.jsonl"
    first_record = path.read_text().splitlines()[0]
    failed = json.loads(first_record) | {"error": "RuntimeError: boom", "prompt_tokens": 99, "completion_tokens": 99}
    with path.open("a") as handle:
        handle.write(first_record + "\n" + json.dumps(failed) + "\n" + first_record[:40])
    assert [(t.requests, t.tokens_in, t.tokens_out) for t in tally(run)] == [(n, tokens_in, tokens_out)]


def test_served_teacher_usage_server_counts_and_a_missing_usage_estimate(tmp_path):
    source, run = instructions(tmp_path), tmp_path / "run"
    with_usage, without = FakeServer(reply="Four."), FakeServer(reply={**completion("Four apples."), "usage": None})
    try:
        config = GenerateConfig(instructions=[str(source)], teacher=[f"openai:m@{with_usage.url}?name=a",
                                                                     f"openai:m@{without.url}?name=b"],
                                max_new_tokens=8, out=str(run), progress=False)
        stats = run_generate(config, RunDir(run))
    finally:
        with_usage.stop()
        without.stop()
    rows = ledger_csv(run)
    served = rows[("generate", f"openai:m@{with_usage.url}")]
    assert (served["requests"], served["tokens_in"], served["tokens_out"], served["counted_by"]) == \
        ("5", str(5 * 3), str(5 * 2), "server")  # the fake server reports 3 in and 2 out per request
    estimated = rows[("generate", f"openai:m@{without.url}")]
    assert estimated["counted_by"] == "cl100k estimate"
    assert int(estimated["tokens_in"]) == sum(token_length(t) for t in TEXTS)
    assert int(estimated["tokens_out"]) == 5 * token_length("Four apples.")
    assert stats["generated"] == 10


def test_price_arithmetic_and_model_names(tmp_path):
    price = Price(input=2.5, output=10.0, batch_discount=0.5)
    assert price.cost(1_000_000, 0) == pytest.approx(2.5)
    assert price.cost(400_000, 30_000) == pytest.approx(0.4 * 2.5 + 0.03 * 10.0)
    # 100k of the 400k in and 10k of the 30k out went through the batch API, at half price
    assert price.cost(400_000, 30_000, 100_000, 10_000) == pytest.approx(
        0.3 * 2.5 + 0.02 * 10.0 + 0.5 * (0.1 * 2.5 + 0.01 * 10.0))
    table = {"gpt-4o-mini": Price(0.15, 0.6), "Qwen/Qwen2.5-7B-Instruct": Price(0.2, 0.2)}
    assert price_of("openai:gpt-4o-mini@https://api.openai.com/v1", table) is table["gpt-4o-mini"]
    assert price_of("vllm:Qwen/Qwen2.5-7B-Instruct?tensor_parallel_size=2", table) is table["Qwen/Qwen2.5-7B-Instruct"]
    assert price_of("hf:org/other-model", table) is None

    # the ledger's cost column from a dataset written here: tokens x price, batched answers discounted
    records = [{"instruction_id": f"i{k}", "sample": 0, "model": "openai:gpt-4o-mini@http://h/v1", "response": "x",
                "prompt_tokens": 1000 + k, "completion_tokens": 200 * k, "error": None,
                "backend": {"backend": "openai-batch" if k % 2 else "openai"}} for k in range(4)]
    (tmp_path / "responses").mkdir()
    write_pairs(tmp_path / "responses" / "d.jsonl", records)
    (tmp_path / "p.json").write_text(json.dumps({"gpt-4o-mini": {"input": 0.15, "output": 0.6, "batch_discount": 0.5}}))
    rows = write_ledger(tmp_path, read_prices(tmp_path / "p.json"))
    expected = sum((r["prompt_tokens"] * 0.15 + r["completion_tokens"] * 0.6) * (0.5 if k % 2 else 1.0)
                   for k, r in enumerate(records)) / 1e6
    assert rows[0]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert float(ledger_csv(tmp_path)[("generate", "openai:gpt-4o-mini@http://h/v1")]["cost_usd"]) == \
        pytest.approx(expected, abs=1e-6)
    unpriced = write_ledger(tmp_path, {"other": Price(1, 1)})
    assert unpriced[0]["cost_usd"] is None and "(no price)" in ledger_line(unpriced)


@pytest.mark.parametrize("text, line, words", [
    ("gpt-4o-mini: {input: 0.15, output: 0.6}\nbad:\n  input: 1\n  output: -2\n", 4, "'output' must be a number >= 0"),
    ("a: {input: 1, output: 2}\nb: {input: 1}\n", 2, "needs 'output'"),
    ("a:\n  input: 1\n  output: 2\n  ouput: 3\n", 4, "unknown key 'ouput'"),
    ("a: {input: 1, output: 2, batch_discount: 1.5}\n", 1, "batch_discount"),
    ("a: 0.15\n", 1, "must be a mapping"),
    ("a: {input: '1', output: 2}\n", 1, "'input' must be a number"),
    ("a: {input: 1, output: 2}\na: {input: 1, output: 3}\n", 2, "duplicate key"),
    ("- a\n", 1, "a price table maps model names"),
])
def test_bad_price_tables_name_the_line(tmp_path, text, line, words):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_prices(path)
    assert error.value.line == line and words in error.value.reason and str(path) in str(error.value)


def test_bad_price_table_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "p.yaml").write_text("m: {input: 1, output: lots}\n")
    out = subprocess.run([sys.executable, "-m", "teachfit.cli", "generate", "--instructions", str(instructions(tmp_path)),
                          "--teacher", "openai:m@http://127.0.0.1:9/v1", "--out", str(tmp_path / "run"),
                          "--prices", str(tmp_path / "p.yaml")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert f"{tmp_path / 'p.yaml'}:1:" in out.stderr and "'output' must be a number" in out.stderr
    assert not (tmp_path / "run" / "responses").exists()  # refused before anything was asked


def test_dry_run_estimate_then_the_measured_ledger_of_a_tiny_study(tmp_path, tiny_chatml):
    instructions(tmp_path)
    name = Path(tiny_chatml).name
    (tmp_path / "prices.yaml").write_text(f"{name}: {{input: 3, output: 15}}\n")
    path = tmp_path / "study.yaml"
    path.write_text(f"""run_dir: run
generate:
  instructions: [instructions.jsonl]
  teacher: ["hf:{tiny_chatml}?name=g", "hf:{tiny_chatml}?name=s&temperature=1.0&n=2"]
  max_new_tokens: 6
  dtype: float32
  progress: false
  prices: prices.yaml
""")
    plan = run_experiment(path, dry_run=True)
    assert not (tmp_path / "run").exists()
    [estimate] = plan["estimate"]
    tokens_in = sum(token_length(t) for t in TEXTS) * 3  # each instruction answered 1 + 2 times
    assert (estimate["requests"], estimate["tokens_in"], estimate["tokens_out"]) == (15, tokens_in, 15 * 6)
    assert estimate["cost_usd"] == pytest.approx((tokens_in * 3 + 90 * 15) / 1e6, abs=1e-6)
    assert "upper bound" in plan_text(plan) and "<= 90 out" in plan_text(plan)

    shown = []
    run_experiment(path, show=shown.append)
    run = tmp_path / "run"
    n, tokens_in, tokens_out = (sum(x) for x in zip(*(file_totals(run / "responses" / f) for f in ("g.jsonl", "s.jsonl"))))
    row = ledger_csv(run)[("generate", f"hf:{tiny_chatml}")]
    assert (int(row["requests"]), int(row["tokens_in"]), int(row["tokens_out"])) == (n, tokens_in, tokens_out) and n == 15
    assert float(row["cost_usd"]) == pytest.approx((tokens_in * 3 + tokens_out * 15) / 1e6, abs=1e-6)
    assert any(line.startswith("ledger (") and f"{n} requests" in line for line in shown)
    assert run_experiment(path, dry_run=True)["estimate"] == []  # nothing left to generate

    # a changed price table re-prices the ledger without running generate again
    (tmp_path / "prices.yaml").write_text(f"{name}: {{input: 1, output: 1}}\n")
    shown = []
    run_experiment(path, show=shown.append)
    assert not [line for line in shown if "running" in line]
    assert float(ledger_csv(run)[("generate", f"hf:{tiny_chatml}")]["cost_usd"]) == \
        pytest.approx((tokens_in + tokens_out) / 1e6, abs=1e-6)


def test_evaluate_ledger_counts_each_stored_judgment_once(tmp_path, tiny_chatml):
    from teachfit.evaluate.stage import run_evaluate

    bench = write_pairs(tmp_path / "bench.jsonl", [{"id": f"b{i}", "instruction": f"Name a fruit, number {i}."}
                                                    for i in range(3)])
    baseline = write_pairs(tmp_path / "baseline.jsonl", [{"id": f"b{i}", "output": "Apple."} for i in range(3)])
    (tmp_path / "p.yaml").write_text("judge-m: {input: 1, output: 4}\n")
    judge = FakeServer(reply="My final verdict is [[A>B]]")
    out = tmp_path / "eval"
    try:
        config = EvaluateConfig(model=f"hf:{tiny_chatml}", judge=f"openai:judge-m@{judge.url}", bench=str(bench),
                                baseline=str(baseline), style="ah", max_new_tokens=4, out=str(out), dtype="float32",
                                progress=False, prices=str(tmp_path / "p.yaml"))
        first = run_evaluate(config)
        again = run_evaluate(config)  # every judgment from the cache: nothing new to count
        asked = len([r for r in judge.requests if "mode" in r])
    finally:
        judge.stop()
    games = [g for line in next((out / "judgments").glob("*.jsonl")).read_text().splitlines()
             for g in json.loads(line)["games"]]
    assert len(games) == 6 and asked == 6
    rows = ledger_csv(out)
    judged = rows[("evaluate", f"openai:judge-m@{judge.url}")]
    assert (judged["requests"], judged["tokens_in"], judged["tokens_out"], judged["counted_by"]) == \
        ("6", "18", "12", "server")
    assert float(judged["cost_usd"]) == pytest.approx((18 * 1 + 12 * 4) / 1e6)
    answered = rows[("evaluate", f"hf:{tiny_chatml}")]
    assert answered["cost_usd"] == ""  # a local model the table does not price
    answers = next((out / "answers").glob("*.jsonl"))
    assert (int(answered["requests"]), int(answered["tokens_in"]), int(answered["tokens_out"])) == file_totals(answers)
    assert first["ledger"] == again["ledger"]
    from teachfit.evaluate.stage import STAGE

    assert "tokens:" in STAGE.line(again) and STAGE.summary(again)["ledger"] == again["ledger"]


def test_batch_judge_and_batch_estimate_are_priced_at_the_batch_discount(tmp_path):
    """A judge behind a provider's batch API (either spelling): its judgments are counted by the
    server and priced at the discount, in the ledger and in the dry run's estimate."""
    from teachfit.ledger import estimate_rows

    judge = "openai:j@http://127.0.0.1:1/v1?batch=1"
    evaluations = tmp_path / "evaluations"
    (evaluations / "judgments").mkdir(parents=True)
    (evaluations / "scores-m--arena_hard.json").write_text(json.dumps({"results": {"judge": judge}}))
    games = [{"games": [{"usage": {"prompt_tokens": 100, "completion_tokens": 10}}] * 2}] * 3
    write_pairs(evaluations / "judgments" / "m--arena_hard-1.jsonl", games)
    prices = {"j": Price(input=2.0, output=8.0, batch_discount=0.5)}
    [row] = write_ledger(tmp_path, prices)
    assert (row["requests"], row["tokens_in"], row["tokens_out"], row["counted_by"]) == (6, 600, 60, "server")
    assert row["cost_usd"] == pytest.approx(0.5 * (600 * 2.0 + 60 * 8.0) / 1e6)
    [estimate] = estimate_rows([("openai-batch:j@http://127.0.0.1:1/v1", ["What is 2 + 2?"], 100)], prices)
    tokens_in = token_length("What is 2 + 2?")
    assert estimate["cost_usd"] == pytest.approx(0.5 * (tokens_in * 2.0 + 100 * 8.0) / 1e6)


def test_a_later_run_without_prices_keeps_the_last_table(tmp_path):
    """`evaluate --prices p.yaml` then a plain `generate`: the ledger keeps its cost column."""
    records = [{"instruction_id": "i0", "sample": 0, "model": "openai:m@http://h/v1", "response": "x",
                "prompt_tokens": 1000, "completion_tokens": 500, "error": None, "backend": {"backend": "openai"}}]
    (tmp_path / "responses").mkdir()
    write_pairs(tmp_path / "responses" / "d.jsonl", records)
    [priced] = write_ledger(tmp_path, {"m": Price(input=1.0, output=2.0)})
    [again] = write_ledger(tmp_path)
    assert again["cost_usd"] == priced["cost_usd"] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert float(ledger_csv(tmp_path)[("generate", "openai:m@http://h/v1")]["cost_usd"]) == pytest.approx(0.002)
    [repriced] = write_ledger(tmp_path, {"m": Price(input=2.0, output=2.0)})  # a new table replaces it
    assert repriced["cost_usd"] == pytest.approx(0.003) and write_ledger(tmp_path)[0]["cost_usd"] == pytest.approx(0.003)
