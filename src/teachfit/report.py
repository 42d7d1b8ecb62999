"""`teachfit report`: one self-contained HTML page (plots embedded as PNG) plus the PNG files.

It shows what a run has: the ranking table and CAR with its interval; with measured results,
CAR vs AP, rho per metric and Figure-2-style AP bars; with --paper, the paper's own Figure 2
and Table 4 from its published numbers; and the settings that produced all of it.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from teachfit.atomic import atomic_write, write_text_atomic
from teachfit.config import ReportConfig
from teachfit.env import require
from teachfit.stage import Stage


def _figure_png(draw: Any, size: tuple[float, float] = (7.5, 4.0)) -> bytes:
    matplotlib = require("matplotlib", "report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    draw(ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def car_bars(ranking: Sequence[dict[str, Any]]) -> bytes:
    """CAR per teacher with its bootstrap 95% interval."""
    def draw(ax: Any) -> None:
        names = [r["teacher"] for r in ranking]
        values = [r["car"] for r in ranking]
        low = [r["car"] - r.get("car_ci_low", r["car"]) for r in ranking]
        high = [r.get("car_ci_high", r["car"]) - r["car"] for r in ranking]
        ax.barh(names[::-1], values[::-1], xerr=[low[::-1], high[::-1]], color="#3b7dd8", capsize=3)
        ax.set_xlabel("CAR = r / (1 + beta L)  (higher is better)")
        ax.set_title("Teachers ranked by Compatibility-Adjusted Reward")
    return _figure_png(draw)


def car_vs_ap(rows: Sequence[dict[str, Any]], truth: str = "AP") -> bytes:
    """Scatter of CAR against the measured AP (or `truth`, the column correlate used), one colour per student."""
    def draw(ax: Any) -> None:
        for student in dict.fromkeys(r["student"] for r in rows):
            mine = [r for r in rows if r["student"] == student]
            ax.scatter([r["car"] for r in mine], [r["ap"] for r in mine], label=student)
            for r in mine:
                ax.annotate(str(r["teacher"]), (r["car"], r["ap"]), fontsize=7)
        ax.set_xlabel("CAR (predicted, no fine-tuning)")
        ax.set_ylabel(f"{truth} (measured)")
        ax.legend(fontsize=7)
        ax.set_title(f"CAR vs measured {truth}")
    return _figure_png(draw)


def rho_bars(labels: Sequence[str], values: Sequence[float], title: str, truth: str = "AP") -> bytes:
    """Horizontal bars of Spearman rho per metric."""
    def draw(ax: Any) -> None:
        ax.barh(list(labels)[::-1], list(values)[::-1], color="#d8743b")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlim(min(-0.2, min(values) - 0.05), 1.0)
        ax.set_xlabel(f"Spearman rho with the {truth} ranking")
        ax.set_title(title)
    return _figure_png(draw)


def ap_bars(grid: Sequence[dict[str, Any]], title: str, truth: str = "AP (%)") -> bytes:
    """Figure-2-style grouped bars: AP per teacher, one group per student."""
    def draw(ax: Any) -> None:
        students = list(dict.fromkeys(r["student"] for r in grid))
        teachers = list(dict.fromkeys(r["teacher"] for r in grid))
        ap = {(r["student"], r["teacher"]): r["ap"] for r in grid}
        width = 0.8 / len(teachers)
        cmap = require("matplotlib", "report").colormaps["tab20"]
        for j, teacher in enumerate(teachers):
            xs = [i + j * width for i in range(len(students))]
            ax.bar(xs, [ap.get((s, teacher), math.nan) for s in students], width, label=teacher, color=cmap(j % 20))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(students))], students, fontsize=8)
        ax.set_ylabel(truth)
        ax.set_title(title)
        ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _figure_png(draw, size=(11.0, 4.5))


def _table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>teachfit report</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th{{background:#f2f2f2}}img{{max-width:100%;display:block;margin:1em 0}}pre{{background:#f7f7f7;padding:1em;font-size:12px;overflow:auto}}
</style></head><body data-images="{n_images}"><h1>teachfit report</h1>{body}
<script>window.addEventListener('load',()=>{{const ok=[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length;
document.body.dataset.loaded=String(ok);}});</script></body></html>"""


def build_report(run: Any, out: str | Path, include_paper: bool = False) -> dict[str, Any]:
    """Write the HTML page of a run (a RunDir, or None for the paper alone) to `out` and its PNGs
    beside it (out's folder /report_png); returns what it contains."""
    from teachfit.files import read_table

    out = Path(out)
    png_dir = out.parent / "report_png"
    png_dir.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    images: dict[str, bytes] = {}
    numbers: dict[str, Any] = {}
    if run and run.ranking_csv.exists():
        ranking, settings = read_table(run.ranking_csv)
        ranking = sorted(ranking, key=lambda r: -float(r["car"]))  # best first, whatever the file's order
        numbers["ranking"] = ranking
        columns = [c for c in ("teacher", "car", "car_ci_low", "car_ci_high", "top_share", "reward", "L", "ppl_self",
                               "ifd_self", "ppl_ref", "ifd_ref", "length") if c in ranking[0]]
        images["car_ranking"] = car_bars(ranking)
        sections.append(f"<h2>Ranking for {html.escape(str(ranking[0].get('student', '')))}</h2>"
                        f"<p>Recommended teacher: <b>{html.escape(str(ranking[0]['teacher']))}</b></p>"
                        + _table_html(ranking, columns) + "{car_ranking}")
        sections.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=2)) + "</pre>")
    if run and run.results_csv.exists() and run.ranking_csv.exists():
        from teachfit.correlate import join, read_rankings, read_truth

        if not run.correlation_csv.exists():
            raise FileNotFoundError(f"{run.correlation_csv} is missing: run `teachfit correlate {run.root}` first")
        table, correlated = read_table(run.correlation_csv)
        column = correlated.get("truth_column", "ap")  # what correlate measured against (--truth-column)
        truth = "AP" if column == "ap" else column
        joined = join(read_rankings([run.ranking_csv]), read_truth(run.results_csv, column), column)
        rows = [r for teachers in joined.values() for r in teachers]
        students = {r["student"] for r in table}
        table = [r for r in table if r["student"] == ("Average" if len(students) > 1 else next(iter(students), None))]
        defined = [r for r in table if isinstance(r["rho"], float) and math.isfinite(r["rho"])]
        numbers["correlation"] = table
        images["car_vs_ap"] = car_vs_ap(rows, truth)
        if defined:
            images["rho_run"] = rho_bars([r["metric"] for r in defined], [r["rho"] for r in defined],
                                         "rho per metric (this run)", truth)
        images["ap_run"] = ap_bars(rows, f"Measured {truth} per teacher (this run)", "AP (%)" if column == "ap" else column)
        note = "" if defined else f"<p>Every rho is undefined: the measured {truth} (or each metric) is the same for all teachers.</p>"
        sections.append("<h2>Prediction vs measurement</h2>{car_vs_ap}" + ("{rho_run}" if defined else note)
                        + "{ap_run}" + _table_html(table, ["metric", "rho", "n_teachers"]))
    if include_paper:
        from teachfit import paper

        table4 = paper.load_table("table4")
        numbers["paper_table4_average"] = dict(zip(table4["metrics"], table4["average"]))
        images["paper_figure2"] = ap_bars(paper.ap_grid(), "The paper's Figure 2: AP of 5 students x 19 teachers")
        images["paper_table4"] = rho_bars(table4["metrics"], table4["average"], "The paper's Table 4 (average rho)")
        sections.append("<h2>The paper's published numbers</h2>{paper_figure2}{paper_table4}"
                        + _table_html([{"metric": m, "rho": v} for m, v in zip(table4["metrics"], table4["average"])],
                                      ["metric", "rho"]))
    if not sections:
        raise FileNotFoundError(f"nothing to report: no ranking.csv in {run.root if run else '.'} (and --paper not given)")
    body = "".join(sections)
    for name, png in images.items():
        with atomic_write(png_dir / f"{name}.png", "wb") as handle:
            handle.write(png)
        data = base64.b64encode(png).decode()
        body = body.replace("{" + name + "}", f'<img alt="{name}" src="data:image/png;base64,{data}">')
    write_text_atomic(out, PAGE.format(n_images=len(images), body=body))
    return {"html": str(out), "images": sorted(images), "numbers": numbers}


# ---- the stage ---------------------------------------------------------------------------------
def run_report(config: ReportConfig, run: Any = None, executor: Any = None) -> dict[str, Any]:
    """The run's tables and plots -> one self-contained HTML page."""
    from teachfit.run import RunDir

    run = run or (RunDir(config.run_dir) if config.run_dir else None)
    out = Path(config.out) if config.out else run.report_html if run else Path("report.html")
    return build_report(run, out, config.paper)


def _units(config: ReportConfig, plan: Any, run: Any) -> list[Any]:
    from dataclasses import replace

    from teachfit.stage import Unit

    return [Unit("report", replace(config, run_dir=str(run.root)), outputs=[run.report_html],
                 inputs=[run.ranking_csv, run.results_csv, run.correlation_csv])]


STAGE = Stage(
    name="report", config=ReportConfig, run=run_report, units=_units, needs=("rank", "evaluate", "correlate"),
    help="One self-contained HTML page with the ranking, CAR vs AP, rho per metric and AP bars (PNGs beside it).",
    summary=lambda result: {"html": result["html"], "images": result["images"]},
    line=lambda result: f"wrote {result['html']} with {len(result['images'])} plots ({', '.join(result['images'])})",
)
