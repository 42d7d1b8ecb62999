"""The CLI as a user runs it: score, rank, errors, and resume after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PAIRS, write_pairs

CLI = [sys.executable, "-m", "teachfit.cli"]


def run(*args, **kwargs):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, **kwargs)


def test_score_then_rank(tmp_path, tiny_llama, tiny_chatml):
    a = write_pairs(tmp_path / "alpha.jsonl", PAIRS)
    b = write_pairs(tmp_path / "beta.jsonl", [dict(p, response=p["response"] + " Thanks!") for p in PAIRS])
    result = run("score", a, b, "--student", f"hf:{tiny_llama}", "--reward-model", f"hf:{tiny_chatml}",
                 "--reward-kind", "judge", "--dtype", "float32", "--out", tmp_path / "s.parquet", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "scored 8 pairs" in result.stdout
    result = run("rank", tmp_path / "s.parquet", "--json", "--csv", tmp_path / "rank.csv")
    assert result.returncode == 0, result.stderr
    ranking = json.loads(result.stdout)
    assert {t["teacher"] for t in ranking["teachers"]} == {"alpha", "beta"}
    assert ranking["recommended"] == max(ranking["teachers"], key=lambda t: t["car"])["teacher"]
    assert (tmp_path / "rank.csv").read_text().startswith("student,teacher,")
    assert ranking["teachers"][0]["student"] == f"hf:{tiny_llama}"
    result = run("select", tmp_path / "s.parquet", "--by", "grape", "--out", tmp_path / "train.jsonl", "--format", "alpaca")
    assert result.returncode == 0 and "selected 4 responses by grape" in result.stdout, result.stderr
    chosen = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(chosen) == 4 and all(set(c) >= {"instruction", "output", "teacher", "selection_score"} for c in chosen)
    result = run("rank", tmp_path / "s.parquet", "--target", "0.9", "--bootstrap", "200")
    assert result.returncode == 0 and "To be on top in 90% of resamples" in result.stdout, result.stderr
    assert "| teacher | CAR [95% CI] | on top | reward | L (nats) |" in result.stdout  # the README's shape


def test_metrics_car_computes_only_what_car_needs(tmp_path, tiny_llama):
    """--metrics car: loss(y|x) equals the full run's, no loss(y) pass (IFD absent), no length column."""
    import pandas as pd

    data = write_pairs(tmp_path / "alpha.jsonl", [dict(p, r=float(i)) for i, p in enumerate(PAIRS)])
    common = ["--student", f"hf:{tiny_llama}", "--reward-column", "r", "--dtype", "float32", "--no-progress"]
    assert run("score", data, *common, "--out", tmp_path / "full.parquet").returncode == 0
    result = run("score", data, *common, "--metrics", "car", "--out", tmp_path / "car.parquet")
    assert result.returncode == 0, result.stderr
    full, car = pd.read_parquet(tmp_path / "full.parquet"), pd.read_parquet(tmp_path / "car.parquet")
    assert list(car["loss_self"]) == list(full["loss_self"]) and list(car["reward"]) == [0.0, 1.0, 2.0, 3.0]
    assert "ifd_self" not in car.columns and full["ifd_self"].notna().all()
    assert "length" in full.columns and "length" not in car.columns
    result = run("score", data, "--student", f"hf:{tiny_llama}", "--metrics", "car,ifd")
    assert result.returncode == 2 and "'ifd' is not one of" in result.stderr


def test_errors_are_one_line_with_file_and_line(tmp_path, tiny_llama):
    bad = write_pairs(tmp_path / "bad.jsonl", [PAIRS[0], '{"instruction": "x"'])
    result = run("score", bad, "--student", f"hf:{tiny_llama}", "--out", tmp_path / "s.parquet", "--no-progress")
    assert result.returncode == 2
    assert f"{bad}:2: malformed JSON" in result.stderr and "Traceback" not in result.stderr
    result = run("score", tmp_path / "missing.jsonl", "--student", f"hf:{tiny_llama}")
    assert result.returncode == 2 and "file not found" in result.stderr
    result = run("score", bad, "--student", "packaged:nope")
    assert result.returncode == 2 and "unknown packaged model 'nope'" in result.stderr
    result = run("score", bad, "--student", f"hf:{tiny_llama}", "--skip-invalid", "--out", tmp_path / "s.parquet",
                 "--no-progress", "--dtype", "float32")
    assert result.returncode == 0 and "1 skipped" in result.stdout


def test_killed_run_resumes_and_scores_every_pair_once(tmp_path, tiny_llama):
    rows = [{"id": f"p{i}", "instruction": f"Question {i}: explain recursion.",
             "response": "A function calls itself on a smaller problem. " * 30} for i in range(1500)]
    data = write_pairs(tmp_path / "t.jsonl", rows)
    out, cache = tmp_path / "s.parquet", tmp_path / "teachfit-cache" / "scores"  # the user cache ($TEACHFIT_CACHE) outside a run
    args = ["score", data, "--student", f"hf:{tiny_llama}", "--out", out, "--no-progress",
            "--dtype", "float32", "--token-budget", "2048"]
    process = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    cached = 0
    while time.time() < deadline and process.poll() is None:
        cached = sum(1 for shard in cache.rglob("shard-*.jsonl") for _ in shard.open())
        if cached >= 64:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert cached >= 64 and not out.exists(), "the run finished before it could be killed"
    result = run(*args)
    assert result.returncode == 0, result.stderr
    from teachfit.files import read_table
    scored, _ = read_table(out)
    assert sorted(r["id"] for r in scored) == sorted(r["id"] for r in rows)  # all, each once
    entries = [json.loads(line)["key"] for shard in cache.rglob("shard-*.jsonl") for line in shard.open()
               if line.strip().endswith("}")]
    assert len(set(entries)) == len(entries)  # no pair was computed (and stored) twice
    elsewhere = tmp_path / "other" / "s.parquet"  # another output folder: every score comes from the user cache
    again = run(*[elsewhere if a == out else a for a in args])
    assert again.returncode == 0 and read_table(elsewhere)[0] == scored
    assert sum(1 for shard in cache.rglob("shard-*.jsonl") for _ in shard.open()) == len(entries)


def test_help_explains_itself():
    result = run("score", "--help")
    assert result.returncode == 0 and "--student" in result.stdout and "--reward-model" in result.stdout
