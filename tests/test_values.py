"""Values that must not be silently wrong (issue 19), through the real CLI where a command
misbehaved: select's beta, select by reward without a student loss, non-finite scores, correlate's
truth column (non-finite values, two rows for one pair), and rank's errors about a scores file."""
import csv
import json
import math
import subprocess
import sys

import pytest

from conftest import synthetic
from teachfit.files import write_jsonl, write_table

CLI = [sys.executable, "-m", "teachfit.cli"]


def cli(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True)


def one_line_error(result, *needles):
    """Exit 2, one line on stderr (no traceback) holding every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def strict_loads(text):
    """json.loads that refuses NaN / Infinity tokens, as strict JSON readers do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


REWARDS = {"alpha": [1.0, 2.0, 3.0, 0.5], "bravo": [2.0, 1.0, math.inf, 0.25], "charlie": [0.0, -math.inf, 1.0, 0.75]}
LOSSES = {"alpha": [1.0, 1.0, 2.0, 0.5], "bravo": [0.5, 3.0, 1.0, 0.5], "charlie": [2.0, 1.0, math.nan, 0.5]}


def scored_folder(tmp_path, with_loss=True, rewards=REWARDS, losses=LOSSES):
    """Response files of three teachers and a scores file made from them, as score writes it."""
    rows, files = [], []
    for teacher, values in rewards.items():
        path = tmp_path / "responses" / f"{teacher}.jsonl"
        write_jsonl(path, [{"id": f"q{i}", "instruction": f"Question {i}?", "response": f"{teacher} answers {i}.",
                            "teacher": teacher} for i in range(len(values))])
        files.append(str(path))
        for i, reward in enumerate(values):
            row = {"id": f"q{i}", "teacher": teacher, "reward": reward, "length": 3 + i}
            if with_loss:
                row["loss_self"] = losses[teacher][i]
            rows.append(row)
    write_table(tmp_path / "scores.parquet", rows, {"inputs": files})
    return tmp_path / "scores.parquet"


# ---- 1. select --beta ---------------------------------------------------------------------------
@pytest.mark.parametrize("beta", ["nan", "-1", "inf"])
def test_select_refuses_a_beta_that_is_not_finite_and_non_negative(tmp_path, beta):
    scores = scored_folder(tmp_path, rewards={"alpha": [1.0, 2.0], "bravo": [2.0, 1.0]},
                           losses={"alpha": [1.0, 1.0], "bravo": [0.5, 3.0]})
    result = cli("select", scores, "--by", "car-instance", "--beta", beta, "--out", tmp_path / "sel.jsonl")
    one_line_error(result, "--beta", "finite", ">= 0")
    assert not (tmp_path / "sel.jsonl").exists()


def test_select_pairs_refuses_a_bad_beta_and_keeps_alpha_checked():
    from teachfit.config import ConfigValueError, SelectConfig
    from teachfit.select import select_pairs

    rows = [{"id": "a", "teacher": "t", "reward": 1.0, "loss_self": 1.0}]
    for beta in (math.nan, -1.0, math.inf):
        with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
            select_pairs(rows, "car-instance", beta=beta)
        with pytest.raises(ConfigValueError, match="beta"):
            SelectConfig(beta=beta)
    for alpha in (math.nan, -0.1, 1.5):
        with pytest.raises(ConfigValueError, match="alpha"):
            SelectConfig(alpha=alpha)
    assert SelectConfig(beta=0.0, alpha=1.0).beta == 0.0
    assert select_pairs(rows, "car-instance", beta=0.0).rows[0]["selection_score"] == 1.0


# ---- 2. select --by reward without a student loss ----------------------------------------------
def test_select_by_reward_on_scores_without_a_student_loss_through_the_cli(tmp_path, tiny_llama):
    """Scores made with `score --metrics reward --reward-column r` hold no loss_self: select by
    reward writes the selection, prints its summary line and the metadata, exit 0."""
    files = []
    for teacher, rewards in (("alpha", [1.0, 5.0, 2.0]), ("bravo", [3.0, 4.0, 0.5])):
        path = tmp_path / f"{teacher}.jsonl"
        write_jsonl(path, [{"id": f"q{i}", "instruction": f"Question {i}?", "response": f"{teacher} {i}.", "r": r}
                           for i, r in enumerate(rewards)])
        files.append(path)
    scored = cli("score", *files, "--student", f"hf:{tiny_llama}", "--metrics", "reward", "--reward-column", "r",
                 "--out", tmp_path / "scores.parquet", "--no-progress", "--device", "cpu")
    assert scored.returncode == 0, scored.stderr
    from teachfit.files import read_table

    rows, _ = read_table(tmp_path / "scores.parquet")
    assert all(r.get("loss_self") is None for r in rows)  # really no student loss
    result = cli("select", tmp_path / "scores.parquet", "--by", "reward", "--out", tmp_path / "sel.jsonl")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout + result.stderr
    assert "selected 3 responses by reward" in out and "mean reward 3.333" in out, out
    assert "loss_self" not in out.split("selected", 1)[1].splitlines()[0]
    written = [strict_loads(line) for line in (tmp_path / "sel.jsonl").read_text().splitlines()]
    assert [(w["teacher"], w["id"]) for w in written] == [("bravo", "q0"), ("alpha", "q1"), ("alpha", "q2")]
    meta = strict_loads((tmp_path / "sel.jsonl.meta.json").read_text())
    assert meta["selection"]["loss_self"] is None and meta["selection"]["reward"] == pytest.approx(10 / 3)
    as_json = cli("select", tmp_path / "scores.parquet", "--by", "reward", "--out", tmp_path / "sel2.jsonl", "--json")
    assert as_json.returncode == 0, as_json.stderr


def test_the_select_line_shows_what_exists():
    from teachfit.select import _line

    line = _line({"method": "reward", "share": {"a": 1.0}, "selection": {"n_pairs": 2, "reward": 1.5, "loss_self": None},
                  "missing": [], "written": ["x.jsonl"]})
    assert line == "selected 2 responses by reward (a 100%); mean reward 1.500 -> x.jsonl"
    assert "dropped" not in line
    line = _line({"method": "reward", "share": {}, "selection": {}, "written": ["x.jsonl"], "dropped_nonfinite": 2})
    assert "2 candidates dropped" in line


# ---- 3. non-finite scores -----------------------------------------------------------------------
def test_select_drops_non_finite_candidates_with_a_count_and_writes_strict_json(tmp_path):
    scores = scored_folder(tmp_path)
    for method in ("reward", "car-instance", "persyn", "grape", "car"):
        out = tmp_path / f"{method}.jsonl"
        result = cli("select", scores, "--by", method, "--out", out)
        assert result.returncode == 0, result.stderr
        written = [strict_loads(line) for line in out.read_text().splitlines()]  # no NaN / Infinity tokens
        assert all(math.isfinite(w["selection_score"]) for w in written)
        meta = strict_loads(out.with_name(out.name + ".meta.json").read_text())
        needs = {"reward": ("reward",), "grape": ("loss_self",)}.get(method, ("reward", "loss_self"))
        expected = sum(1 for t in REWARDS for i in range(4)
                       if not all(math.isfinite({"reward": REWARDS, "loss_self": LOSSES}[n][t][i]) for n in needs))
        assert meta["dropped_nonfinite"] == expected, (method, meta)
        assert f"{expected} candidates dropped" in result.stdout + result.stderr
        if method == "reward":  # the +inf reward of bravo/q2 is not chosen: alpha's 3.0 is
            assert {w["id"]: w["teacher"] for w in written}["q2"] == "alpha"
            assert meta["teachers"]["bravo"]["n_dropped_nonfinite"] == 1
            assert meta["teachers"]["bravo"]["reward"] == pytest.approx((2.0 + 1.0 + 0.25) / 3)


def test_select_pairs_never_picks_an_infinite_score():
    from teachfit.select import select_pairs

    rows = [{"id": "q", "teacher": "a", "reward": 1.0, "loss_self": 1.0},
            {"id": "q", "teacher": "b", "reward": math.inf, "loss_self": 1.0},
            {"id": "q", "teacher": "c", "reward": 2.0, "loss_self": -math.inf}]
    for method in ("reward", "car-instance", "persyn", "grape"):
        selection = select_pairs(rows, method)
        assert math.isfinite(selection.rows[0]["selection_score"]), method
        assert selection.summary["dropped_nonfinite"] == (1 if method in ("reward", "grape") else 2)
    only_bad = [dict(rows[1], id="z")]
    selection = select_pairs(rows[:1] + only_bad, "reward")
    assert selection.summary["missing"] == ["z"] and selection.summary["dropped_nonfinite"] == 1


def test_write_table_jsonl_is_strict_json(tmp_path):
    write_table(tmp_path / "t.jsonl", [{"a": math.nan, "b": math.inf, "c": [-math.inf, 1.0]}], {"x": math.nan})
    assert strict_loads((tmp_path / "t.jsonl").read_text()) == {"a": None, "b": None, "c": [None, 1.0]}
    assert strict_loads((tmp_path / "t.jsonl.meta.json").read_text()) == {"x": None}


def test_rank_drops_infinite_rewards_with_a_count(tmp_path):
    scores = scored_folder(tmp_path)
    result = cli("rank", scores, "--bootstrap", "0", "--json-out", tmp_path / "ranking.json")
    assert result.returncode == 0, result.stderr
    data = strict_loads((tmp_path / "ranking.json").read_text())
    assert data["settings"]["dropped_nonfinite"] == 3
    assert {t["teacher"]: t["n_dropped_nonfinite"] for t in data["teachers"]} == {"alpha": 0, "bravo": 1, "charlie": 2}


# ---- 4. correlate --truth-column ----------------------------------------------------------------
def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def test_correlate_drops_non_finite_truth_values_with_a_count(tmp_path):
    metric_rows, truth_rows = synthetic(students=("s1",), n=8)
    write_csv(tmp_path / "ranking.csv", metric_rows)
    rows = [{"student": r["student"], "teacher": r["teacher"], "bench": "ifeval", "score": r["ap"]} for r in truth_rows]
    rows[2]["score"], rows[5]["score"] = "nan", "inf"
    rows.append({"student": "s1", "teacher": "t7", "bench": "other", "score": ""})  # another bench: no value
    write_csv(tmp_path / "results.csv", rows)
    result = cli("correlate", tmp_path, "--truth-column", "score", "--bootstrap", "20", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dropped_truth"]["count"] == 2
    assert report["dropped_truth"]["rows"] == [f"{tmp_path / 'results.csv'}:4", f"{tmp_path / 'results.csv'}:7"]
    car = next(r for r in report["correlation"] if r["metric"] == "car" and r["student"] == "s1")
    assert car["n_teachers"] == 6 and math.isfinite(car["rho"])
    text = cli("correlate", tmp_path, "--truth-column", "score", "--bootstrap", "20")
    assert text.returncode == 0, text.stderr
    assert "2 results rows with a NaN or infinite score left out" in text.stdout + text.stderr
    with open(tmp_path / "correlation.csv") as handle:
        assert all(math.isfinite(float(r["rho"])) for r in csv.DictReader(handle) if r["rho"])


def test_correlate_refuses_two_results_rows_for_one_pair(tmp_path):
    metric_rows, truth_rows = synthetic(students=("s1",), n=5)
    write_csv(tmp_path / "ranking.csv", metric_rows)
    rows = [{"student": r["student"], "teacher": r["teacher"], "model": "m", "score": r["ap"]} for r in truth_rows]
    rows.append({"student": "s1", "teacher": "t1", "model": "m-again", "score": 0.5})
    write_csv(tmp_path / "results.csv", rows)
    result = cli("correlate", tmp_path, "--truth-column", "score", "--bootstrap", "20")
    one_line_error(result, f"{tmp_path / 'results.csv'}:7:", "line 3", "s1", "t1")
    assert not (tmp_path / "correlation.csv").exists()


# ---- 5. rank's errors name the scores file ------------------------------------------------------
@pytest.mark.parametrize("case", ["null loss", "no loss column", "no teacher column"])
def test_rank_errors_about_a_scores_file_name_it(tmp_path, case):
    rows = [{"id": f"q{i}", "teacher": t, "reward": 1.0 + i, "loss_self": 1.0} for i in range(3) for t in ("a", "b")]
    if case == "null loss":
        rows[3]["loss_self"] = None
    elif case == "no loss column":
        rows = [{k: v for k, v in r.items() if k != "loss_self"} for r in rows]
    else:
        rows = [{k: v for k, v in r.items() if k != "teacher"} for r in rows]
    write_table(tmp_path / "scores.parquet", rows, {})
    result = cli("rank", tmp_path / "scores.parquet", "--bootstrap", "0")
    needle = {"null loss": "no loss_self", "no loss column": "no 'loss_self' column",
              "no teacher column": "no 'teacher' column"}[case]
    one_line_error(result, f"{tmp_path / 'scores.parquet'}: ", needle)
