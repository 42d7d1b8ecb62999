"""Experiment files are checked before any model loads: file:line, the key, the nearest valid key."""
import subprocess
import sys

import pytest

from teachfit.experiment import load_experiment
from teachfit.records import InputError

GOOD = """run_dir: out
responses: [a.jsonl]
score:
  student: packaged:gemma3-270m
  max_length: 1024
rank:
  beta: 2
"""


def check(tmp_path, text):
    path = tmp_path / "e.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_experiment(path)
    return error.value


def test_a_good_file_gives_configs_with_its_values(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(GOOD)
    experiment = load_experiment(path)
    assert experiment.run_dir == tmp_path / "out"
    assert experiment.responses == [str(tmp_path / "a.jsonl")]
    assert experiment.stages["score"].student == ["packaged:gemma3-270m"]  # one spec becomes a list
    assert experiment.stages["score"].max_length == 1024 and experiment.stages["rank"].beta == 2.0
    assert experiment.executor.type == "local"


@pytest.mark.parametrize("text, line, words", [
    (GOOD.replace("  max_length: 1024", "  max_lenght: 1024"), 5, ["unknown key 'max_lenght'", "did you mean 'max_length'"]),
    (GOOD.replace("  beta: 2", "  beta: high"), 7, ["'rank.beta' must be float", "'high'"]),
    (GOOD.replace("  max_length: 1024", "  max_length: 1.5"), 5, ["'score.max_length' must be int"]),
    (GOOD.replace("  student: packaged:gemma3-270m\n", ""), 3, ["'score' needs 'student'"]),
    (GOOD.replace("packaged:gemma3-270m", "packaged:gemma9"), 4, ["unknown packaged model 'gemma9'"]),
    (GOOD.replace("rank:", "rnak:"), 6, ["unknown section 'rnak'", "did you mean 'rank'"]),
    (GOOD.replace("  beta: 2", "  beta: -1"), 7, ["'rank.beta': must be a finite number >= 0"]),
    (GOOD.replace("  beta: 2", "  reward_transform: log"), 7, ["'log' is not one of raw, shift, sigmoid"]),
    (GOOD + "generate:\n  instructions: [i.jsonl]\n  teacher:\n    - hf:x?temperature=hot\n", 11, ["temperature='hot'"]),
    (GOOD + "generate:\n  instructions: [i.jsonl]\n  teacher:\n    - hf:x?name=../../evil\n", 11, ["cannot be used"]),
    (GOOD + "generate:\n  instructions: [i.jsonl]\n  teacher:\n    - {spec: hf:x, temprature: 1}\n", 11,
     ["unknown teacher setting 'temprature'", "did you mean 'temperature'"]),
    (GOOD.replace("  max_length: 1024", "  out: elsewhere.parquet"), 5, ["set by the run directory"]),
    ("score: [1, 2\n", 2, ["not valid YAML"]),
    (GOOD + "executor: {type: slurm}\n", 8, ["'slurm' is not one of local, ray"]),
])
def test_bad_files_name_the_line_and_the_key(tmp_path, text, line, words):
    error = check(tmp_path, text)
    assert error.line == line, str(error)
    for word in words:
        assert word in error.reason, str(error)


def test_cli_exits_2_with_file_and_line(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(GOOD.replace("  max_length: 1024", "  max_lenght: 1024"))
    result = subprocess.run([sys.executable, "-m", "teachfit.cli", "run", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{path}:5: unknown key 'max_lenght'" in result.stderr and "Traceback" not in result.stderr


def test_stage_flags_come_from_the_config_and_a_config_file_feeds_them(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "teachfit.cli", "score", "--help"], capture_output=True,
                               text=True).stdout
    for flag in ("--student", "--reward-model", "--reward-column", "--max-length", "--token-budget", "--config"):
        assert flag in help_text
    bad = tmp_path / "score.yaml"
    bad.write_text("student: packaged:gemma3-270m\ntoken_budjet: 5\n")
    result = subprocess.run([sys.executable, "-m", "teachfit.cli", "score", str(tmp_path), "--config", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and f"{bad}:2: unknown key 'token_budjet'" in result.stderr


@pytest.mark.parametrize("extra, expected", [
    ("", ["car", "reward", "ppl_self", "rsr_self", "length"]),            # rank only: no loss(y) pass
    ("  reference: packaged:smollm2-135m-instruct\n", ["car", "reward", "ppl_self", "rsr_self", "ppl_ref", "length"]),
    ("  metrics: [all]\n", []),                                          # said explicitly: every column
    ("  metrics: car,ifd_self\n", ["car", "ifd_self"]),
])
def test_score_computes_what_the_later_stages_use(tmp_path, extra, expected):
    """Without score.metrics and without correlate/report, the IFD pass (loss(y)) is left out."""
    path = tmp_path / "e.yaml"
    path.write_text(GOOD.replace("  max_length: 1024\n", f"  max_length: 1024\n  reward_column: r\n{extra}"))
    score = load_experiment(path).stages["score"]
    assert score.metrics == expected
    assert score.unconditional_for("self") == (not expected or "ifd_self" in expected)
    path.write_text(path.read_text() + "correlate: {}\n")
    if "metrics" not in extra:
        assert load_experiment(path).stages["score"].metrics == []  # correlate compares every column


@pytest.mark.parametrize("extra, line, words", [
    ("  metrics: [car, ifd]\n", 5, ["'ifd' is not one of", "ifd_self"]),
    ("  metrics: [ppl_self]\n  reference: packaged:smollm2-135m-instruct\n", 6, ["reference", "no _ref column"]),
    ("  metrics: [ppl_self, ppl_ref]\n", 5, ["_ref columns need a reference"]),
])
def test_bad_metrics_are_refused_at_their_line(tmp_path, extra, line, words):
    error = check(tmp_path, GOOD.replace("  max_length: 1024\n", extra))
    assert error.line == line and all(w in str(error) for w in words)


def test_car_without_a_reward_is_refused(tmp_path):
    error = check(tmp_path, GOOD.replace("  max_length: 1024\n", "  metrics: [car]\n"))
    assert "car needs a reward" in str(error)


def test_evaluate_answers_and_a_second_item_of_a_bench_are_refused_at_their_line(tmp_path):
    """The run's checkpoints are what an experiment evaluates: `answers` (exclusive with the model)
    is refused; two evaluate items of one bench would write the same results.csv row."""
    evaluate = "evaluate:\n  - bench: ifeval\n    answers: given.jsonl\n"
    error = check(tmp_path, GOOD + evaluate)
    assert error.line == 10 and "'evaluate.0.answers' is set by the run directory" in error.reason
    two = ("evaluate:\n  - bench: rating\n    judge: packaged:smollm2-135m-instruct\n"
           "  - bench: ifeval\n  - bench: rating\n    judge: packaged:smollm2-135m-instruct\n")
    error = check(tmp_path, GOOD + two)
    assert error.line == 12 and "a second evaluate item for bench 'rating' (first at line 9)" in error.reason
    files = "evaluate:\n  - {bench: a/b.jsonl, judge: packaged:smollm2-135m-instruct}\n  - {bench: c/b.jsonl, judge: packaged:smollm2-135m-instruct}\n"
    error = check(tmp_path, GOOD + files)
    assert error.line == 10 and "bench 'b'" in error.reason
    path = tmp_path / "e.yaml"
    path.write_text(GOOD + evaluate)
    result = subprocess.run([sys.executable, "-m", "teachfit.cli", "run", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and f"{path}:10: " in result.stderr and "Traceback" not in result.stderr


def test_paths_in_listed_sections_are_relative_to_the_file(tmp_path):
    """evaluate may be a list: each item's path keys resolve like a single section's."""
    path = tmp_path / "sub" / "e.yaml"
    path.parent.mkdir()
    path.write_text(GOOD + "train: {max_steps: 1}\nevaluate:\n  - {bench: ifeval, ifeval_prompts: ../prompts.jsonl}\n"
                           "  - {bench: rating, judge: packaged:smollm2-135m-instruct}\n")
    first, second = load_experiment(path).stages["evaluate"]
    assert first.ifeval_prompts == str(path.parent / "../prompts.jsonl") and second.bench == "rating"
