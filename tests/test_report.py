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


def write_run(folder):
    import csv

    metric_rows, truth_rows = synthetic()
    for row in metric_rows:
        row.update(car_ci_low=row["car"] * 0.9, car_ci_high=row["car"] * 1.1, top_share=0.5)
    metric_rows = [r for r in metric_rows if r["student"] == "s1"]
    for name, rows in (("ranking.csv", metric_rows), ("results.csv", truth_rows)):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    from teachfit.config import CorrelateConfig
    from teachfit.correlate import run_correlate

    run_correlate(CorrelateConfig(run_dir=str(folder), bootstrap=50), None)
    return metric_rows


def test_report_files_and_numbers(tmp_path):
    from teachfit.report import build_report

    rows = write_run(tmp_path)
    result = build_report(RunDir(tmp_path), tmp_path / "report.html", include_paper=True)
    assert result["images"] == ["ap_run", "car_ranking", "car_vs_ap", "paper_figure2", "paper_table4", "rho_run"]
    for name in result["images"]:
        png = (tmp_path / "report_png" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
    for row in rows:
        assert f"<td>{row['car']:.4g}</td>" in page
    best = max(rows, key=lambda r: r["car"])["teacher"]
    assert f"Recommended teacher: <b>{best}</b>" in page


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
