"""`teachfit report` rendered by a real headless Chromium: it renders, every image loads, the
numbers shown are the CSVs' numbers."""
import re
import shutil
import subprocess
import sys

import pytest

from conftest import synthetic
from teachfit.run import RunDir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


SCORERS = [{"role": "self", "model": {"spec": "hf:s1"}},
           {"kind": "generative_judge", "model": {"spec": "packaged:qwen2.5-0.5b-instruct"}},
           {"kind": "length", "encoding": "cl100k_base"}]


def write_run(folder, n_teachers=12, spread=0.2):
    """A run as the stages leave it: manifest, scores (4 pairs per teacher), a selection, ranking.csv
    written by `rank`, results.csv with intervals, correlation.csv written by `correlate`."""
    import numpy as np

    from teachfit.config import CorrelateConfig, RankConfig
    from teachfit.correlate import run_correlate
    from teachfit.files import write_table
    from teachfit.rank import run_rank

    run = RunDir(folder)
    run.write_manifest({"experiment": "study.yaml", "sections": {"score": {"student": "hf:s1"}, "rank": {"beta": 3.0}}})
    metric_rows, truth_rows = synthetic(students=("s1",), n=n_teachers)
    rng = np.random.default_rng(1)
    pairs = [{"id": str(i), "teacher": m["teacher"], "reward": m["reward"] + rng.normal(0, spread),
              "loss_self": max(0.05, m["L"] + rng.normal(0, 0.02)), "ppl_self": m["ppl_self"], "length": m["length"]}
             for m in metric_rows for i in range(4)]
    run.scores_dir.mkdir()
    write_table(run.scores("s1"), pairs, {"stage": "score", "scorers": SCORERS, "versions": {"teachfit": "0.1.0"}})
    run.selections_dir.mkdir()
    write_table(run.selection("car-instance"), [{"teacher": m["teacher"], "id": "0"} for m in metric_rows], {})
    run_rank(RankConfig(scores=[str(folder)], bootstrap=200), run)
    results = [{"student": "hf:s1", "teacher": t["teacher"], "bench": "pairwise", "ap": t["ap"], "ah_wr": t["ap"],
                "ah_ci_low": t["ap"] - 1.0, "ah_ci_high": t["ap"] + 1.5} for t in truth_rows]
    results.append(dict(results[0], teacher="car-instance"))  # a selection is trained and evaluated too
    write_table(run.results_csv, results, {"stage": "evaluate"})
    run_correlate(CorrelateConfig(run_dir=str(folder), bootstrap=50), None)
    from teachfit.files import read_table

    return read_table(run.ranking_csv)[0], results


def test_report_files_and_numbers(tmp_path):
    from teachfit.report import build_report

    rows, results = write_run(tmp_path)
    result = build_report(RunDir(tmp_path), tmp_path / "report.html", include_paper=True)
    assert result["images"] == ["ap_run", "car_ranking", "car_vs_ap", "paper_figure2", "paper_table4", "rho_run"]
    for name in result["images"]:
        png = (tmp_path / "report_png" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
    for row in rows:  # CAR with its interval, under a readable header
        assert f"<td>{row['car']:.3f} [{row['car_ci_low']:.3f}, {row['car_ci_high']:.3f}]</td>" in page
    assert "<th>CAR [95% CI]</th>" in page and "<th>PPL-Self</th>" in page and "<th>car_ci_low</th>" not in page
    teachers = [r for r in rows if r["kind"] == "teacher"]
    best = max(teachers, key=lambda r: r["car"])["teacher"]
    assert f"Recommended teacher: <b>{best}</b>" in page


def test_report_shows_selections_apart_and_recommends_a_teacher(tmp_path):
    from teachfit.report import build_report

    rows, _ = write_run(tmp_path)
    page = build_report(RunDir(tmp_path), tmp_path / "report.html")["html"]
    page = (tmp_path / "report.html").read_text()
    assert "Recommended teacher: <b>car-instance</b>" not in page
    teachers_part, selections_part = page.split("<h3>Selections", 1)
    assert "<td>car-instance</td>" not in teachers_part.split("<h2>Prediction")[0]
    assert "<td>car-instance</td>" in selections_part.split("<h2>")[0]


def test_report_settings_say_what_was_run(tmp_path):
    from teachfit.report import build_report

    write_run(tmp_path)
    build_report(RunDir(tmp_path), tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    settings = page.split("<h2>Settings</h2>", 1)[1]
    for label, value in (("Student", "hf:s1"), ("Reward source", "generative_judge packaged:qwen2.5-0.5b-instruct"),
                         ("beta", "3"), ("Pairs per teacher", "4"), ("teachfit version", "0.1.0"),
                         ("Command", "teachfit run study.yaml"), ("Rank command", "teachfit rank")):
        assert re.search(f"<th>{re.escape(label)}</th><td>[^<]*{re.escape(value)}", settings), (label, value)
    assert re.search(r"<th>Date</th><td>\d{4}-\d\d-\d\d", settings)
    assert '{"stage": "rank"}' not in page


def test_report_intervals_on_measurements_and_rho(tmp_path):
    from teachfit.files import read_table
    from teachfit.report import build_report

    _, results = write_run(tmp_path)
    build_report(RunDir(tmp_path), tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    first = results[0]
    assert f"{first['ah_wr']:.1f} [{first['ah_ci_low']:.1f}, {first['ah_ci_high']:.1f}]" in page
    table, _ = read_table(RunDir(tmp_path).correlation_csv)
    car = next(r for r in table if r["metric"] == "car")
    assert f"<td>CAR</td><td>{car['rho']:.3f} [{car['ci_low']:.2f}, {car['ci_high']:.2f}]</td>" in page
    assert "<th>rho [95% CI]</th>" in page and "fewer than" not in page and "Only " not in page


def test_report_warns_about_few_teachers(tmp_path):
    from teachfit.report import build_report

    write_run(tmp_path, n_teachers=3)  # 3 teachers and the selection, all evaluated
    build_report(RunDir(tmp_path), tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "Only 4 teachers" in page and "at least 5 teachers" in page


def test_report_flags_an_unsettled_lead(tmp_path):
    import numpy as np

    from teachfit.config import RankConfig
    from teachfit.files import write_table
    from teachfit.rank import run_rank
    from teachfit.report import build_report

    run, rng = RunDir(tmp_path), np.random.default_rng(0)
    rows = [{"id": str(i), "teacher": t, "reward": rng.normal(mu, 1), "loss_self": 1.0}
            for t, mu in (("a", 5.2), ("b", 5.0)) for i in range(40)]
    run.scores_dir.mkdir()
    write_table(run.scores("s1"), rows, {"scorers": SCORERS})
    share = run_rank(RankConfig(scores=[str(tmp_path)], bootstrap=500), run)["hf:s1"].top_share
    assert share < 0.8
    build_report(run, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert f"on top in {share:.0%} of the bootstrap resamples: not settled, below 80%" in page
    assert "The lead is not settled" in page and "pairs per teacher" in page and "more than the 40 scored" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (make test installs it where apt-get can)")
def test_report_renders_in_headless_chromium(tmp_path):
    write_run(tmp_path)
    subprocess.run([sys.executable, "-m", "teachfit.cli", "report", str(tmp_path), "--paper"], check=True,
                   capture_output=True)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    url = (tmp_path / "report.html").as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="6"' in dom and 'data-loaded="6"' in dom  # all six images decoded in the browser
    assert "Recommended teacher" in dom and "The paper's published numbers" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20000
