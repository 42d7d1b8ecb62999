"""`teachfit correlate`: rho per metric against scipy, beta sweep and leave-one-teacher-out fit."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import synthetic
from teachfit.run import RunDir
from teachfit.correlate import beta_sweep, correlation_table, fit_beta, join


def test_rho_per_metric_matches_scipy_with_directions():
    metric_rows, truth_rows = synthetic()
    table = correlation_table(join(metric_rows, truth_rows), n_bootstrap=200)
    for row in table:
        if row["student"] == "Average":
            continue
        teachers = [m for m in metric_rows if m["student"] == row["student"]]
        ap = [t["ap"] for t in truth_rows if t["student"] == row["student"]]
        sign = -1 if row["metric"] == "ppl_self" else 1
        expected = stats.spearmanr([sign * t[row["metric"]] for t in teachers], ap).statistic
        assert row["rho"] == pytest.approx(expected)
        assert row["ci_low"] <= row["rho"] + 1e-9 and row["rho"] - 1e-9 <= row["ci_high"]
    average = next(r for r in table if r["student"] == "Average" and r["metric"] == "car")
    assert average["rho"] == pytest.approx(np.mean([r["rho"] for r in table if r["metric"] == "car" and r["student"] != "Average"]))


def test_beta_sweep_peaks_at_the_true_beta_and_fit_finds_it():
    joined = join(*synthetic(beta_true=2.0))
    sweep = {r["beta"]: r["rho_mean"] for r in beta_sweep(joined)}
    assert sweep[2.0] == pytest.approx(1.0)
    fit = fit_beta(joined)
    assert sweep[fit["beta"]] == pytest.approx(1.0) and fit["rho_mean_at_beta"] == pytest.approx(1.0)
    assert fit["beta"] == 3.0  # 2 and 3 order these teachers identically: ties go to the paper's 3
    assert sweep[0.0] < 0.99  # reward alone misorders them
    assert len(fit["loo_choices"]) == 12


def test_cli_correlate_on_files(tmp_path):
    metric_rows, truth_rows = synthetic()
    for name, rows in (("ranking.csv", metric_rows), ("results.csv", truth_rows)):
        with open(tmp_path / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    out = subprocess.run([sys.executable, "-m", "teachfit.cli", "correlate", str(tmp_path), "--fit-beta", "--json",
                          "--bootstrap", "100"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["fit_beta"]["rho_mean_at_beta"] == pytest.approx(1.0)
    assert (tmp_path / "correlation.csv").exists()
    text = subprocess.run([sys.executable, "-m", "teachfit.cli", "correlate", str(tmp_path), "--bootstrap", "50"],
                          capture_output=True, text=True).stdout
    assert "Average" in text and "car" in text
    bad = subprocess.run([sys.executable, "-m", "teachfit.cli", "correlate", "--metrics", str(tmp_path / "ranking.csv"),
                          "--truth", str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.csv: file not found" in bad.stderr


@pytest.mark.parametrize("name,size", [("Qwen2.5-7B-Instruct", 7.0), ("smollm2-135m-instruct", 0.135),
                                       ("qwen2.5-coder-0.5b-instruct", 0.5), ("Llama-3.1-405B-Instruct", 405.0),
                                       ("gpt-4", None), ("Phi-3-mini-128k-instruct", None)])
def test_teacher_size_from_name(name, size):
    from teachfit.correlate import size_from_name
    assert size_from_name(name) == size


def test_truth_column_that_is_not_numeric_or_unknown_is_a_file_line_error(tmp_path):
    """--truth-column rating_judge (a model spec) or a column results.csv does not have: exit 2,
    the file, the column and the first bad line; no traceback."""
    from teachfit.files import write_table

    metric_rows, _ = synthetic()
    write_table(tmp_path / "ranking.csv", metric_rows, {})
    rows = [{"student": "s1", "teacher": "t0", "model": "m", "bench": "ifeval", "ifeval_prompt_loose": 50.0,
             "rating_mean": "", "rating_judge": ""},
            {"student": "s1", "teacher": "t1", "model": "m", "bench": "rating", "ifeval_prompt_loose": "",
             "rating_mean": 5.5, "rating_judge": "packaged:qwen2.5-coder-0.5b-instruct"}]
    write_table(tmp_path / "results.csv", rows, {})

    def correlate(column):
        return subprocess.run([sys.executable, "-m", "teachfit.cli", "correlate", str(tmp_path), "--truth-column", column],
                              capture_output=True, text=True)

    bad = correlate("rating_judge")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert f"{tmp_path / 'results.csv'}:3: column 'rating_judge' must hold numbers" in bad.stderr
    unknown = correlate("ifeval_prompt_lose")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr, unknown.stderr
    assert "results.csv: no column 'ifeval_prompt_lose'" in unknown.stderr and "ifeval_prompt_loose" in unknown.stderr


def test_report_shows_the_truth_column_correlate_used(tmp_path):
    """`teachfit report` joins results.csv on the column correlation.csv was computed against
    (correlate --truth-column), not on AP alone."""
    from teachfit.config import CorrelateConfig
    from teachfit.files import write_table
    from teachfit.report import build_report
    from teachfit.correlate import run_correlate

    metric_rows, truth_rows = synthetic()
    metric_rows = [r for r in metric_rows if r["student"] == "s1"]
    write_table(tmp_path / "ranking.csv", metric_rows, {})
    rows = [{"student": r["student"], "teacher": r["teacher"], "bench": "ifeval", "ap": "",
             "ifeval_prompt_loose": 100.0 - r["ap"]} for r in truth_rows]
    write_table(tmp_path / "results.csv", rows, {})
    run_correlate(CorrelateConfig(run_dir=str(tmp_path), bootstrap=20, truth_column="ifeval_prompt_loose"), None)
    result = build_report(RunDir(tmp_path), tmp_path / "report.html")
    assert {"car_vs_ap", "ap_run"} <= set(result["images"])
    car = next(r for r in result["numbers"]["correlation"] if r["metric"] == "car")
    assert car["rho"] == pytest.approx(-1.0)  # the reversed column: what correlate computed, shown as it is


def test_average_rows_count_teachers_not_students():
    metric_rows, truth_rows = synthetic()
    table = correlation_table(join(metric_rows, truth_rows), n_bootstrap=20)
    per_student = {r["student"]: r["n_teachers"] for r in table if r["student"] != "Average"}
    students = len(per_student)
    assert students > 1 and set(per_student.values()) == {12}
    for row in (r for r in table if r["student"] == "Average"):
        assert row["n_teachers"] == 12 and row["n_students"] == students


def test_fewer_than_five_teachers_are_warned_about():
    from teachfit.correlate import correlation_text, few_teachers_warning

    metric_rows, truth_rows = synthetic()
    keep = {"t0", "t1", "t2", "t3"}
    joined = join([r for r in metric_rows if r["teacher"] in keep], [r for r in truth_rows if r["teacher"] in keep])
    table = correlation_table(joined, n_bootstrap=20)
    warning = few_teachers_warning(table)
    assert warning and "4 teachers" in warning and "at least 5" in warning
    assert few_teachers_warning(correlation_table(join(metric_rows, truth_rows), n_bootstrap=20)) is None
    text = correlation_text({"correlation": table, "beta_sweep": beta_sweep(joined)})
    assert warning in text
