"""kill -9 during generate and during score of `teachfit run` (local, and Ray with its own
cluster): the re-run ends with every answer and every pair computed exactly once, equal to an
uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_study
from teachfit.pipeline import run_experiment
from teachfit.files import read_table

N = 40


def experiment(folder: Path, student: str, teacher: str, executor: str = "local") -> Path:
    return write_study(folder, student, teacher, executor, n=N, max_new_tokens=24, window=8, judge=True)


def kill_when(path: Path, ready) -> None:
    """Start `teachfit run path` and kill -9 its whole process group as soon as ready() holds."""
    process = subprocess.Popen([sys.executable, "-m", "teachfit.cli", "run", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def lines(folder: Path, pattern: str) -> int:
    return sum(len([l for l in p.read_text(errors="replace").splitlines() if l.strip()]) for p in folder.rglob(pattern))


def outputs(run: Path, student: str) -> tuple[list, list]:
    responses = [{k: v for k, v in json.loads(l).items() if k != "seconds"}
                 for l in (run / "responses" / "t.jsonl").read_text().splitlines()]
    scores = read_table(run / "scores" / f"{Path(student).name}.parquet")[0]
    return responses, scores


def check_resumed(tmp_path: Path, run: Path, path: Path, tiny_llama: str, tiny_chatml: str) -> None:
    cache = run / ".cache" / "scores"
    keys = [json.loads(l)["key"] for p in cache.rglob("shard-*.jsonl") for l in p.read_text().splitlines() if l.strip()]
    assert len(keys) == len(set(keys)) == 3 * N  # student, judge, length: every pair exactly once
    reference = experiment(tmp_path / "uninterrupted", tiny_llama, tiny_chatml)
    run_experiment(reference, show=lambda *_: None)
    (responses, scores), (responses_ref, scores_ref) = (outputs(run, tiny_llama),
                                                        outputs(tmp_path / "uninterrupted" / "study", tiny_llama))
    assert responses == responses_ref
    # equal up to fp32 rounding: the pairs a resumed run still has to score fall into other batches
    # than an uninterrupted run's (other shapes, other summation order in the matmuls)
    assert [sorted(row) for row in scores] == [sorted(row) for row in scores_ref]
    for row, row_ref in zip(scores, scores_ref):
        for key, value in row.items():
            expected = pytest.approx(row_ref[key], rel=1e-6) if isinstance(value, float) else row_ref[key]
            assert value == expected, (row["id"], key)


def test_kill_during_generate_then_during_score(tmp_path, tiny_llama, tiny_chatml):
    path = experiment(tmp_path / "a", tiny_llama, tiny_chatml)
    run = tmp_path / "a" / "study"
    kill_when(path, lambda: 0 < lines(run / "responses", "t.jsonl") < N)
    assert 0 < lines(run / "responses", "t.jsonl") < N
    kill_when(path, lambda: lines(run / ".cache" / "scores", "shard-*.jsonl") > 0)
    assert not (run / "scores" / f"{Path(tiny_llama).name}.parquet").exists()
    run_experiment(path, show=lambda *_: None)
    check_resumed(tmp_path, run, path, tiny_llama, tiny_chatml)


def test_kill_a_ray_run_during_score(tmp_path, tiny_llama, tiny_chatml):
    pytest.importorskip("ray")
    path = experiment(tmp_path / "r", tiny_llama, tiny_chatml, "{type: ray, num_workers: 2}")
    run = tmp_path / "r" / "study"
    try:
        kill_when(path, lambda: lines(run / ".cache" / "scores", "shard-*.jsonl") > 0)
        subprocess.run([sys.executable, "-m", "teachfit.cli", "run", str(path)], check=True, capture_output=True)
    finally:  # the killed driver's cluster processes: a kill -9 leaves them behind
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    check_resumed(tmp_path, run, path, tiny_llama, tiny_chatml)
