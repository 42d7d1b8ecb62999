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
