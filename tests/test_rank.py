"""Ranking: CAR per teacher against a hand computation, ranks, transforms, bootstrap."""
import math

import numpy as np
import pytest

from teachfit.rank import rank_teachers
from teachfit.ranking_text import markdown_table


def rows_for(teacher, rewards, losses, **extra):
    return [{"id": str(i), "teacher": teacher, "reward": r, "loss_self": l, "ppl_self": math.exp(l), **extra}
            for i, (r, l) in enumerate(zip(rewards, losses))]


def test_car_and_recommendation_match_hand_computation():
    # strong teacher: high reward but incompatible (high loss); medium teacher wins on CAR
    rows = rows_for("large", [8, 9, 10], [2.0, 2.5, 3.0]) + rows_for("medium", [6, 7, 8], [0.5, 0.6, 0.7])
    ranking = rank_teachers(rows, beta=3.0, n_bootstrap=200)
    by = {r["teacher"]: r for r in ranking.rows}
    assert by["large"]["car"] == pytest.approx(9 / (1 + 3 * 2.5))
    assert by["medium"]["car"] == pytest.approx(7 / (1 + 3 * 0.6))
    assert ranking.recommended == "medium" and ranking.top_share == 1.0
    assert by["large"]["rank_reward"] == 1 and by["medium"]["rank_car"] == 1
    assert by["medium"]["rank_ppl_self"] == 1  # lower perplexity ranks first
    assert by["medium"]["car_ci_low"] <= by["medium"]["car"] <= by["medium"]["car_ci_high"]
    # beta = 0 is plain average reward
    assert rank_teachers(rows, beta=0.0, n_bootstrap=0).recommended == "large"
    assert "Recommended teacher: medium" in markdown_table(ranking)


def test_negative_rewards_warn_and_shift_is_recorded():
    rows = rows_for("a", [-2.0, -1.0], [1.0, 1.0]) + rows_for("b", [1.0, 2.0], [1.0, 1.0])
    with pytest.warns(RuntimeWarning, match="negative"):
        rank_teachers(rows, n_bootstrap=0)
    ranking = rank_teachers(rows, reward_transform="shift", n_bootstrap=0)
    by = {r["teacher"]: r for r in ranking.rows}
    assert by["a"]["reward_used"] == pytest.approx(0.5)  # shifted by the global minimum -2
    assert by["b"]["reward_used"] == pytest.approx(3.5)
    assert ranking.settings["reward_transform"] == "shift"


def test_close_teachers_give_split_bootstrap():
    rng = np.random.default_rng(0)
    rows = rows_for("a", rng.normal(5, 1, 40), np.full(40, 1.0)) + rows_for("b", rng.normal(5, 1, 40), np.full(40, 1.0))
    ranking = rank_teachers(rows, n_bootstrap=500)
    assert 0.5 <= ranking.top_share < 0.99


def test_missing_reward_is_a_clear_error():
    with pytest.raises(ValueError, match="--reward-model"):
        rank_teachers([{"teacher": "a", "loss_self": 1.0}])


# --- teachers covering different instructions: said, and compared on the shared ones by default ---
def uneven_rows():
    """a answers 0-3, b lacks 3, c lacks 0 (and its answer to 2 has a NaN loss: dropped, so c lacks 2 too)."""
    values = {"a": {0: (9.0, 0.5), 1: (4.0, 1.0), 2: (4.0, 1.0), 3: (9.0, 0.5)},
              "b": {0: (1.0, 1.0), 1: (6.0, 1.0), 2: (6.0, 1.0)},
              "c": {1: (5.0, 1.0), 2: (5.0, math.nan), 3: (1.0, 2.0)}}
    return [{"id": str(i), "teacher": t, "reward": r, "loss_self": l} for t, v in values.items() for i, (r, l) in v.items()]


def test_teachers_covering_different_instructions_are_compared_on_the_shared_ones():
    with pytest.warns(RuntimeWarning, match="dropped 1 pairs"):
        ranking = rank_teachers(uneven_rows(), beta=1.0, n_bootstrap=0)
    coverage = ranking.settings["coverage"]
    assert coverage == {"instructions": 4, "shared": 1, "missing": {"a": 0, "b": 1, "c": 2}, "shared_only": True}
    by = {r["teacher"]: r for r in ranking.rows}
    assert {t: r["n_pairs"] for t, r in by.items()} == {"a": 1, "b": 1, "c": 1}  # instruction 1 only
    assert {t: r["n_instructions_missing"] for t, r in by.items()} == {"a": 0, "b": 1, "c": 2}
    assert by["a"]["car"] == pytest.approx(4.0 / 2) and by["b"]["car"] == pytest.approx(6.0 / 2)
    assert ranking.recommended == "b"
    text = markdown_table(ranking)
    assert "cover different instructions" in text and "b lacks 1 of 4" in text and "c lacks 2 of 4" in text
    assert "compared on the 1 instruction all teachers share" in text and "--no-shared-only" in text

    with pytest.warns(RuntimeWarning, match="dropped 1 pairs"):
        own = rank_teachers(uneven_rows(), beta=1.0, n_bootstrap=0, shared_only=False)
    by = {r["teacher"]: r for r in own.rows}
    assert {t: r["n_pairs"] for t, r in by.items()} == {"a": 4, "b": 3, "c": 2}
    assert by["a"]["car"] == pytest.approx(6.5 / (1 + 0.75)) and own.recommended == "a"
    assert own.settings["coverage"]["shared_only"] is False
    text = markdown_table(own)
    assert "b lacks 1 of 4" in text and "each teacher on its own pairs" in text and "--shared-only" in text


def test_equal_coverage_says_nothing_and_samples_share_their_instruction():
    rows = [{"id": f"{i}#s{k}", "teacher": "sampled", "reward": 5.0 + k, "loss_self": 1.0} for i in range(3) for k in range(2)]
    rows += [{"id": str(i), "teacher": "greedy", "reward": 5.0, "loss_self": 1.0} for i in range(3)]
    rows += [dict(rows[i], teacher="selection") for i in (0, 3, 4)]  # a selection: one answer per instruction
    ranking = rank_teachers(rows, n_bootstrap=0)
    assert ranking.settings["coverage"] == {"instructions": 3, "shared": 3, "shared_only": True,
                                            "missing": {"sampled": 0, "greedy": 0, "selection": 0}}
    assert {r["teacher"]: r["n_pairs"] for r in ranking.rows} == {"sampled": 6, "greedy": 3, "selection": 3}
    assert "cover different instructions" not in markdown_table(ranking)


def test_teachers_sharing_no_instruction_are_refused_by_default():
    rows = rows_for("a", [1.0, 2.0], [1.0, 1.0]) + [dict(r, id=f"b{r['id']}") for r in rows_for("b", [3.0], [1.0])]
    with pytest.raises(ValueError, match="no instruction is answered by every teacher.*--no-shared-only"):
        rank_teachers(rows, n_bootstrap=0)
    assert {r["n_pairs"] for r in rank_teachers(rows, n_bootstrap=0, shared_only=False).rows} == {1, 2}


def test_rank_cli_says_what_each_teacher_lacks(tmp_path):
    import json
    import subprocess
    import sys

    from teachfit.config import RankConfig
    from teachfit.files import write_table

    assert RankConfig().shared_only is True
    path = tmp_path / "scores.parquet"
    write_table(path, [r for r in uneven_rows() if not math.isnan(r["loss_self"])], {})
    cli = [sys.executable, "-m", "teachfit.cli", "rank", str(path), "--bootstrap", "0", "--beta", "1"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "b lacks 1 of 4" in done.stdout and "c lacks 2 of 4" in done.stdout
    assert "compared on the 1 instruction all teachers share" in done.stdout
    done = subprocess.run(cli + ["--no-shared-only", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["settings"]["coverage"]["missing"] == {"a": 0, "b": 1, "c": 2}
    assert {r["teacher"]: r["n_pairs"] for r in out["teachers"]} == {"a": 4, "b": 3, "c": 2}


# --- selections are datasets, not teachers: their own table, never recommended ---
def test_selections_are_ranked_beside_the_teachers_and_never_recommended():
    rows = rows_for("a", [5, 6, 7], [1.0, 1.0, 1.0]) + rows_for("b", [4, 5, 6], [1.0, 1.0, 1.0])
    rows += rows_for("car-instance", [9, 9, 9], [0.5, 0.5, 0.5])  # better than every teacher on CAR
    ranking = rank_teachers(rows, n_bootstrap=200, selections=["car-instance"])
    assert ranking.recommended == "a" and ranking.top_share > 0.5
    assert [r["teacher"] for r in ranking.rows] == ["a", "b"]
    assert {r["kind"] for r in ranking.rows} == {"teacher"}
    (selection,) = ranking.selections
    assert selection["teacher"] == "car-instance" and selection["kind"] == "selection"
    assert selection["car"] == pytest.approx(9 / (1 + 3 * 0.5))
    assert selection["car_ci_low"] <= selection["car"] <= selection["car_ci_high"]
    assert math.isnan(selection["top_share"])  # the bootstrap's "on top" is over teachers only
    assert ranking.to_dict()["selections"] == ranking.selections
    text = markdown_table(ranking)
    assert "Recommended teacher: a" in text and "Recommended teacher: car-instance" not in text
    teachers_table, rest = text.split("Selections", 1)
    assert "car-instance" not in teachers_table and "| car-instance |" in rest


def test_rank_stage_writes_selections_with_kind_and_correlate_keeps_them(tmp_path):
    from teachfit.config import RankConfig
    from teachfit.correlate import read_rankings
    from teachfit.files import read_table, write_table
    from teachfit.rank import run_rank
    from teachfit.run import RunDir

    run = RunDir(tmp_path)
    run.scores_dir.mkdir()
    rows = rows_for("a", [5, 6, 7], [1.0, 1.0, 1.0]) + rows_for("b", [4, 5, 6], [1.0, 1.0, 1.0])
    write_table(run.scores("stu"), rows, {"scorers": [{"role": "self", "model": {"spec": "hf:stu"}}]})
    run.selections_dir.mkdir()
    write_table(run.selection("car-instance"), [{"teacher": "a", "id": "2"}, {"teacher": "b", "id": "1"}], {})
    rankings = run_rank(RankConfig(scores=[str(tmp_path)], bootstrap=100), run)
    assert rankings["hf:stu"].recommended == "a"
    table, meta = read_table(run.ranking_csv)
    assert [(r["teacher"], r["kind"]) for r in table] == [("a", "teacher"), ("b", "teacher"), ("car-instance", "selection")]
    assert meta["students"]["hf:stu"]["recommended"] == "a"
    assert {r["teacher"] for r in read_rankings([run.ranking_csv])} == {"a", "b", "car-instance"}


# --- a lead that the bootstrap does not settle is said to be unsettled, with the pairs that would settle it ---
def test_weak_lead_is_flagged_with_the_pairs_that_would_settle_it():
    rng = np.random.default_rng(0)
    rows = rows_for("a", rng.normal(5.2, 1, 40), np.full(40, 1.0)) + rows_for("b", rng.normal(5, 1, 40), np.full(40, 1.0))
    ranking = rank_teachers(rows, n_bootstrap=500)
    assert ranking.top_share < 0.8
    needed = ranking.settings["pairs_needed"]  # computed without asking (no target given)
    assert needed["target"] == 0.8 and needed["recommended"] == ranking.recommended
    text = markdown_table(ranking)
    assert "not settled" in text and "below 80%" in text
    shown = needed["pairs_needed"] or needed["optimistic_pairs_needed"]
    assert f"{shown} pairs per teacher" in text and f"{shown - 40} more than the 40 scored" in text


def test_one_bootstrap_serves_the_intervals_and_the_pairs_needed():
    # teachers whose order of appearance is not their order by name: the estimate reuses rank's draws,
    # so the share on top it reports is the ranking's own (two bootstraps disagreed, and cost double)
    rng = np.random.default_rng(1)
    rows = (rows_for("zeta", rng.normal(5, 1, 60), np.full(60, 1.0)) + rows_for("alpha", rng.normal(5.1, 1, 60), np.full(60, 1.0))
            + rows_for("mu", rng.normal(4.9, 1, 60), np.full(60, 1.0)))
    ranking = rank_teachers(rows, n_bootstrap=400, seed=3)
    needed = ranking.settings["pairs_needed"]
    assert 0 < ranking.top_share < 0.8 and needed["top_share"] == ranking.top_share
    assert list(needed["n_pairs"]) == ["zeta", "alpha", "mu"]
    # two teachers with the same CAR: both recommend the first in order of appearance
    tied = rows_for("zeta", [5.0, 6.0, 4.0], [1.0, 1.0, 1.0]) + rows_for("alpha", [5.0, 6.0, 4.0], [1.0, 1.0, 1.0])
    ranking = rank_teachers(tied + rows_for("mu", [4.0, 5.0, 3.0], [1.0, 1.0, 1.0]), n_bootstrap=200)
    needed = ranking.settings["pairs_needed"]
    assert ranking.recommended == needed["recommended"] == "zeta" and needed["top_share"] == ranking.top_share


def test_settled_lead_says_nothing_more():
    rows = rows_for("large", [8, 9, 10], [2.0, 2.5, 3.0]) + rows_for("medium", [6, 7, 8], [0.5, 0.6, 0.7])
    ranking = rank_teachers(rows, n_bootstrap=200)
    assert ranking.top_share == 1.0 and "pairs_needed" not in ranking.settings
    assert "not settled" not in markdown_table(ranking)
