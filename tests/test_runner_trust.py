"""`teachfit run` can be trusted: completion covers outputs, names never collide, YAML cannot hang
or mislead, paths stay inside the run directory, the plan is complete, Ctrl-C says what was kept.
Each case goes through the real CLI (or the function it calls) on a study scored by a tiny model."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_pairs
from teachfit.pipeline import run_experiment
from teachfit.records import InputError
from teachfit.run import RunDir

CLI = [sys.executable, "-m", "teachfit.cli"]
PAIRS = [{"id": f"i{k}", "instruction": f"Question {k}?", "response": f"Answer number {k}." * (k + 1), "r": float(k % 3)}
         for k in range(4)]


def study(folder: Path, student: str, body: str = "", beta: float = 3.0) -> Path:
    """A study of two given datasets, scored with the rewards in the files (column r) by `student`."""
    (folder / "data").mkdir(exist_ok=True)
    write_pairs(folder / "data" / "alpha.jsonl", PAIRS)
    write_pairs(folder / "data" / "beta.jsonl", [dict(p, response=p["response"] + " Thanks!", r=p["r"] + 1) for p in PAIRS])
    path = folder / "study.yaml"
    path.write_text(f"""run_dir: run
responses: [data/alpha.jsonl, data/beta.jsonl]
score:
  student: hf:{student}
  reward_column: r
  metrics: [car, length]
  dtype: float32
  progress: false
rank:
  beta: {beta}
  bootstrap: 10
{body}""")
    return path


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, **kwargs)


def ran(messages: list) -> list:
    """The units a run ran (not those it found done)."""
    return [m.split("]")[0][1:] for m in messages if m.startswith("[") and "] running" in m]


def test_outputs_edited_deleted_or_damaged_make_their_unit_run_again(tmp_path, tiny_llama):
    path = study(tmp_path, tiny_llama, "select:\n  - {by: reward}\n")
    run_experiment(path, show=lambda *_: None)
    run = RunDir(tmp_path / "run")
    score_unit = f"score-{Path(tiny_llama).name}"

    # rank by hand with another beta: the study's next run re-ranks at its own beta
    done = run_cli("rank", run.root, "--beta", "5", "--bootstrap", "0")
    assert done.returncode == 0, done.stderr
    assert all(r["settings"]["beta"] == 5 for r in json.loads(run.ranking_json.read_text()).values())
    messages = []
    run_experiment(path, show=messages.append)
    assert ran(messages) == ["rank"] and "ranking.csv changed since it was written" in " ".join(messages)
    assert all(r["settings"]["beta"] == 3 for r in json.loads(run.ranking_json.read_text()).values())

    # a selection that lost a record is selected again (and rank follows it)
    selection = run.selection("reward")
    full = selection.read_text()
    selection.write_text("".join(full.splitlines(keepends=True)[1:]))
    messages = []
    run_experiment(path, show=messages.append)
    assert ran(messages) == ["select-reward"] and selection.read_text() == full  # the same bytes: rank is done

    # a deleted scores file is computed again, then what reads it
    run.scores(Path(tiny_llama).name).unlink()
    messages = []
    run_experiment(path, show=messages.append)
    assert ran(messages) == [score_unit, "select-reward", "rank"]

    # garbage ranking.json, a marker holding a list: run again, no traceback, no JSON message
    run.ranking_json.write_text("{not json")
    (run.root / ".markers" / "select-reward.json").write_text("[1, 2]")
    messages = []
    run_experiment(path, show=messages.append)
    assert ran(messages) == ["select-reward", "rank"]
    assert json.loads(run.ranking_json.read_text())  # written again, whole

    messages = []
    run_experiment(path, show=messages.append)
    assert ran(messages) == []


@pytest.mark.parametrize("body, line, words", [
    ("select:\n  - {by: reward}\n  - {by: grape, name: reward}\n", 14, ["select item 2", "'reward'", "select item 1", "line 13"]),
    ("select:\n  - {by: reward, name: alpha}\n", 13, ["'alpha'", "responses file", "line 2"]),
])
def test_two_entries_that_would_write_one_file_are_refused_before_any_work(tmp_path, tiny_llama, body, line, words):
    path = study(tmp_path, tiny_llama, body)
    result = run_cli("run", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:{line}:" in result.stderr, result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert not (tmp_path / "run").exists()


def test_two_responses_files_of_one_name_and_two_teachers_of_one_name_are_refused(tmp_path, tiny_llama):
    path = study(tmp_path, tiny_llama)
    (tmp_path / "other").mkdir()
    write_pairs(tmp_path / "other" / "alpha.jsonl", PAIRS)
    path.write_text(path.read_text().replace("responses: [data/alpha.jsonl, data/beta.jsonl]",
                                             "responses:\n  - data/alpha.jsonl\n  - other/alpha.jsonl"))
    error = run_cli("run", path)
    assert error.returncode == 2 and f"{path}:4:" in error.stderr
    assert "other/alpha.jsonl" in error.stderr and "data/alpha.jsonl" in error.stderr and "(line 3)" in error.stderr
    write_pairs(tmp_path / "i.jsonl", [{"instruction": "Hi?"}])
    text = ("run_dir: run\ngenerate:\n  instructions: [i.jsonl]\n  teacher:\n"
            f"    - hf:{tiny_llama}?name=same\n    - {{spec: 'hf:{tiny_llama}', name: same, temperature: 0.5}}\n"
            f"score:\n  student: hf:{tiny_llama}\n")
    path.write_text(text)
    error = run_cli("run", path)
    assert error.returncode == 2 and f"{path}:6:" in error.stderr and "generate teacher 1" in error.stderr


@pytest.mark.parametrize("text, line, words", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
     "d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e]\n",
     1, ["anchors and aliases"]),
    ("run_dir: a\nrank:\n  beta: 2\n  beta: 3\n", 4, ["duplicate key 'beta' (first at line 3)"]),
    ("rank:\n  beta: [1,\n", 3, ["not valid YAML"]),
    ("run_dir: [a, b]\nrank: {}\n", 1, ["'run_dir' must be a folder name"]),
])
def test_yaml_cannot_hang_or_mislead(tmp_path, text, line, words):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    started = time.perf_counter()
    result = run_cli("run", path, "--dry-run")
    assert time.perf_counter() - started < 30
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:{line}:" in result.stderr and all(w in result.stderr for w in words), result.stderr


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"run_dir: a\nrank:\n  beta: \xff\n")
    result = run_cli("run", path)
    assert result.returncode == 2 and f"{path}:3: not UTF-8" in result.stderr and "Traceback" not in result.stderr
    config = tmp_path / "train.yaml"
    config.write_bytes(b"learning_rate: 2e-5\nseed: \xfe\n")
    result = run_cli("train", tmp_path, "--config", config)
    assert result.returncode == 2 and f"{config}:2: not UTF-8" in result.stderr


def test_numbers_as_people_write_them_and_local_models_relative_to_the_file(tmp_path, tiny_llama):
    from teachfit.experiment import load_experiment

    (tmp_path / "models").mkdir()
    os.symlink(tiny_llama, tmp_path / "models" / "student")
    path = study(tmp_path, "./models/student", "train:\n  learning_rate: 2e-5\n  warmup_steps: 0\n")
    experiment = load_experiment(path)
    assert experiment.stages["train"].learning_rate == 2e-5
    assert experiment.stages["score"].student == [f"hf:{tmp_path / 'models' / 'student'}"]


def test_a_teacher_mapping_value_is_one_value(tmp_path, tiny_llama):
    """name: 'x&n=3' must not quietly set n=3: it is a name (and not a file name teachfit accepts)."""
    from teachfit.experiment import load_experiment

    write_pairs(tmp_path / "i.jsonl", [{"instruction": "Hi?"}])
    path = tmp_path / "study.yaml"
    path.write_text(f"generate:\n  instructions: [i.jsonl]\n  teacher:\n    - {{spec: 'hf:{tiny_llama}', name: 'x&n=3'}}\n")
    with pytest.raises(InputError) as error:
        load_experiment(path)
    assert error.value.line == 4 and "'x&n=3' cannot be used as a dataset name" in str(error.value)
    path.write_text(f"generate:\n  instructions: [i.jsonl]\n  teacher:\n    - {{spec: 'hf:{tiny_llama}', name: 'a+b', top_p: 0.5}}\n")
    from teachfit.generate import teacher_requests

    request, = teacher_requests(load_experiment(path).stages["generate"])
    assert request.name == "a+b" and request.settings.top_p == 0.5 and request.settings.n == 1


def test_no_write_follows_a_link_out_of_the_run_directory(tmp_path, tiny_llama):
    path = study(tmp_path, tiny_llama)
    run_experiment(path, show=lambda *_: None)
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    ranking = tmp_path / "run" / "ranking.json"
    ranking.unlink()
    ranking.symlink_to(outside)
    result = run_cli("run", path)
    assert result.returncode == 2 and "leads out of the run directory" in result.stderr
    assert outside.read_text() == "keep me"


def test_the_plan_lists_every_unit_and_only_names_stages_of_the_file(tmp_path, tiny_llama):
    body = "select:\n  - {by: reward}\ntrain:\n  max_steps: 1\nevaluate:\n  - {bench: ifeval, limit: 2}\ncorrelate: {}\n"
    path = study(tmp_path, tiny_llama, body)
    plan = run_experiment(path, dry_run=True)["plan"]
    student = Path(tiny_llama).name
    names = [r["stage"] for r in plan]
    assert names == [f"score-{student}", "select-reward", "rank"] + [f"train-{student}--{d}" for d in ("alpha", "beta", "reward")] \
        + [f"evaluate-ifeval-{student}--{d}" for d in ("alpha", "beta", "reward")] + ["correlate"]
    assert all(r["status"] == "to run" for r in plan) and not (tmp_path / "run").exists()
    result = run_cli("run", path, "--only", "report")
    assert result.returncode == 2 and "has no 'report' section" in result.stderr


def test_after_a_change_later_units_are_to_run_in_the_plan(tmp_path, tiny_llama):
    path = study(tmp_path, tiny_llama, "select:\n  - {by: reward}\n")
    run_experiment(path, show=lambda *_: None)
    assert all(r["status"] == "done" for r in run_experiment(path, dry_run=True)["plan"])
    study(tmp_path, tiny_llama, "select:\n  - {by: reward}\n", beta=1.0)
    status = {r["stage"]: r["status"] for r in run_experiment(path, dry_run=True)["plan"]}
    assert status == {f"score-{Path(tiny_llama).name}": "done", "select-reward": "done", "rank": "to run"}


def test_ctrl_c_says_what_was_saved_and_a_second_run_waits_its_turn(tmp_path, tiny_llama):
    path = study(tmp_path, tiny_llama)
    with RunDir(tmp_path / "run").lock():  # another run holds the directory
        held = run_cli("run", path)
    assert held.returncode == 2 and "another teachfit run is working in this run directory (pid" in held.stderr
    process = subprocess.Popen(CLI + ["run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "running" in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "interrupted during [score-" in err, (out, err)
    assert "run `teachfit run" in err and "Traceback" not in err
    again = run_cli("run", path)
    assert again.returncode == 0, again.stderr



def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    """The lock is the operating system's (flock): a run killed with SIGKILL leaves RUN/.lock behind,
    and the next run takes it over without a word."""
    script = ("import sys, time\nfrom teachfit.run import RunDir\n"
              "with RunDir(sys.argv[1]).lock():\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match=f"pid {holder.pid} on"):
        with RunDir(tmp_path / "run").lock():
            pass
    holder.kill()
    holder.wait()
    assert (tmp_path / "run" / ".lock").exists()
    with RunDir(tmp_path / "run").lock():
        assert f"pid {os.getpid()} on" in (tmp_path / "run" / ".lock").read_text()
