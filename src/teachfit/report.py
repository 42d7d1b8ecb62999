"""`teachfit report`: one self-contained HTML page (plots embedded as PNG) plus the PNG files.

It shows what a run has: per student the ranking table of teachers (CAR with its interval,
readable column names as in the terminal), the recommendation (always a teacher) and whether its
lead is settled, and the selections in a table of their own; with measured results, the
measurements with their intervals, CAR vs AP, rho per metric with its interval (and a warning
under 5 teachers) and Figure-2-style AP bars; with --paper, the paper's own Figure 2 and Table 4
from its published numbers; and the settings that produced all of it (student, reward source,
beta, pairs per teacher, date, version, command), read from the files the stages wrote.
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def car_bars(ranking: Sequence[dict[str, Any]]) -> bytes:
    """CAR per teacher with its bootstrap 95% interval; selections (kind = selection) in grey below."""
    def draw(ax: Any) -> None:
        names = [("[selection] " if r.get("kind") == "selection" else "") + str(r["teacher"]) for r in ranking]
        values = [r["car"] for r in ranking]
        low = [r["car"] - r["car_ci_low"] if _finite(r.get("car_ci_low")) else 0.0 for r in ranking]
        high = [r["car_ci_high"] - r["car"] if _finite(r.get("car_ci_high")) else 0.0 for r in ranking]
        colors = ["#9a9a9a" if r.get("kind") == "selection" else "#3b7dd8" for r in ranking]
        ax.barh(names[::-1], values[::-1], xerr=[low[::-1], high[::-1]], color=colors[::-1], capsize=3)
        ax.set_xlabel("CAR = r / (1 + beta L)  (higher is better)")
        ax.set_title("Teachers ranked by Compatibility-Adjusted Reward (selections in grey)")
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
    """Figure-2-style grouped bars: AP per teacher, one group per student (with its interval where
    the rows have `ap_lo` and `ap_hi`)."""
    def draw(ax: Any) -> None:
        students = list(dict.fromkeys(r["student"] for r in grid))
        teachers = list(dict.fromkeys(r["teacher"] for r in grid))
        ap = {(r["student"], r["teacher"]): r["ap"] for r in grid}
        interval = {(r["student"], r["teacher"]): (r.get("ap_lo"), r.get("ap_hi")) for r in grid}
        width = 0.8 / len(teachers)
        cmap = require("matplotlib", "report").colormaps["tab20"]
        for j, teacher in enumerate(teachers):
            xs = [i + j * width for i in range(len(students))]
            heights = [ap.get((s, teacher), math.nan) for s in students]
            bounds = [interval.get((s, teacher), (math.nan, math.nan)) for s in students]
            errors = ([[h - lo for h, (lo, _) in zip(heights, bounds)], [hi - h for h, (_, hi) in zip(heights, bounds)]]
                      if all(_finite(lo) and _finite(hi) for lo, hi in bounds) else None)
            ax.bar(xs, heights, width, label=teacher, color=cmap(j % 20), yerr=errors, capsize=2)
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


def _cells_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of already formatted cells (escaped here)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ranking_html(rows: Sequence[dict[str, Any]], first: str, skip: tuple[str, ...] = ()) -> str:
    """Teachers (or selections) with the terminal's readable columns (ranking_text.TABLE_COLUMNS)."""
    from teachfit.ranking_text import shown_columns

    columns = shown_columns(list(rows), skip)
    if all(_finite(r.get("n_pairs")) for r in rows):
        columns.insert(1, ("pairs", lambda r: f"{int(r['n_pairs'])}"))
    header = [first if name == "teacher" else name for name, _ in columns]
    return _cells_html(header, [[show(r) for _, show in columns] for r in rows])


def _with_interval(value: Any, low: Any, high: Any, digits: int, interval_digits: int | None = None) -> str:
    """`value [low, high]`, or the value alone when the interval is not known."""
    if not _finite(value):
        return "-"
    inner = digits if interval_digits is None else interval_digits
    return f"{value:.{digits}f}" + (f" [{low:.{inner}f}, {high:.{inner}f}]" if _finite(low) and _finite(high) else "")


def interval_columns(column: str) -> tuple[str, str] | None:
    """The columns of results.csv holding `column`'s 95% interval (evaluate writes them), or None."""
    if column == "rating_mean":
        return "rating_lo", "rating_hi"
    if column == "ah_wr":
        return "ah_ci_low", "ah_ci_high"
    if column.startswith("ifeval_"):
        return f"{column}_lo", f"{column}_hi"
    return None


def _measured_html(rows: Sequence[dict[str, Any]], column: str, truth: str, kinds: dict[Any, str]) -> str:
    """The measured results with their intervals (AP: its parts, AE2 LC and AH WR with its interval)."""
    parts = [column] + ([c for c in ("ae2_lc", "ah_wr") if any(_finite(r.get(c)) for r in rows)] if column == "ap" else [])
    names = {"ap": "AP", "ae2_lc": "AE2 LC", "ah_wr": "AH WR"}
    header = ["student", "teacher", "kind"] + [names.get(c, c) + (" [95% CI]" if interval_columns(c) else "") for c in parts]
    body = []
    for r in rows:
        cells = [str(r["student"]), str(r["teacher"]), kinds.get((str(r["student"]), str(r["teacher"])), "teacher")]
        for c in parts:
            low, high = interval_columns(c) or ("", "")
            cells.append(_with_interval(r.get(c), r.get(low), r.get(high), 1))
        body.append(cells)
    return f"<h3>Measured {html.escape(truth)}</h3>" + _cells_html(header, body)


def _rho_html(table: Sequence[dict[str, Any]]) -> str:
    """rho per metric with its interval over teachers, the teachers (and students averaged)."""
    from teachfit.ranking_text import METRIC_LABELS

    averaged = any(r["student"] == "Average" for r in table)
    header = (["student"] if averaged else []) + ["metric", "rho [95% CI]", "teachers"] + (["students"] if averaged else [])
    body = []
    for r in table:
        teachers = f"{int(r['n_teachers'])}" if _finite(r.get("n_teachers")) else "-"
        cells = ([str(r["student"])] if averaged else []) + [METRIC_LABELS.get(r["metric"], r["metric"]),  # rho to 3 digits, its interval to 2 (as correlate's text)
                 _with_interval(r["rho"], r.get("ci_low"), r.get("ci_high"), 3, 2), teachers]
        if averaged:
            cells.append(f"{int(r['n_students'])}" if _finite(r.get("n_students")) else "-")
        body.append(cells)
    return _cells_html(header, body)


def _scores_metadata(path: Path) -> dict[str, Any]:
    """The teachfit metadata of a scores file (its schema only, not its rows); {} when unreadable."""
    try:
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(b"teachfit")
        data = json.loads(raw) if raw else {}
    except Exception:  # a report still shows what it can
        return {}
    return data if isinstance(data, dict) else {}


def describe_scorer(scorer: dict[str, Any]) -> str:
    """A scorer of a scores file's metadata in words: 'generative_judge packaged:...', "column 'r'"."""
    if "column" in scorer:
        return f"column '{scorer['column']}' of the responses files"
    model = (scorer.get("model") or {}).get("spec", "")
    return " ".join(str(p) for p in (scorer.get("kind") or scorer.get("role"), model) if p)


def run_settings(run: Any, ranking: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[tuple[str, str]]:
    """What was run, as (label, value): student, reward source, beta, pairs per teacher, date,
    teachfit version and command, from the manifest, ranking.csv's metadata and the scores files."""
    import os
    from datetime import datetime

    manifest = json.loads(run.manifest_path.read_text()) if run.manifest_path.exists() else {}
    scores = {p: _scores_metadata(p) for p in run.score_files()}
    scorers = [s for m in scores.values() for s in m.get("scorers") or []]
    students = list(dict.fromkeys(str(r.get("student", "")) for r in ranking))
    rewards = list(dict.fromkeys(describe_scorer(s) for s in scorers
                                 if "role" not in s and s.get("kind") not in (None, "length")))
    others = list(dict.fromkeys(f"{s['role']}: {(s.get('model') or {}).get('spec', '?')}" for s in scorers if "role" in s))
    teachers = [r for r in ranking if r.get("kind", "teacher") != "selection"]
    counts = sorted({int(r["n_pairs"]) for r in teachers if _finite(r.get("n_pairs"))})
    version = ((manifest.get("versions") or {}).get("teachfit")
               or next((m.get("versions", {}).get("teachfit") for m in scores.values() if m.get("versions")), None))
    if not version:
        from teachfit import __version__

        version = f"{__version__} (installed now; the run recorded none)"
    date = meta.get("date") or datetime.fromtimestamp(os.path.getmtime(run.ranking_csv)).astimezone().isoformat(
        timespec="seconds") + " (ranking.csv's file time)"
    config = manifest.get("config") or {}
    out = [("Student", ", ".join(students)),
           ("Reward source", ", ".join(rewards) or "not recorded (no scores file in the run)"),
           ("Other scorers", ", ".join(others) or "-"),
           ("beta", f"{meta['beta']:g}" if _finite(meta.get("beta")) else "not recorded"),
           ("Reward transform", str(meta.get("reward_transform", "not recorded"))),
           ("Pairs per teacher", "-".join(map(str, (counts[0], counts[-1]) if len(counts) > 1 else counts)) or "-"),
           ("Bootstrap resamples", str(meta.get("n_bootstrap", "not recorded"))),
           ("Compared on shared instructions", str(meta.get("shared_only", "not recorded"))),
           ("Date", date), ("teachfit version", str(version))]
    if config.get("experiment"):
        sections = ", ".join(config.get("sections") or {})
        out.append(("Command", f"teachfit run {config['experiment']}" + (f" (sections: {sections})" if sections else "")))
    if meta.get("command"):
        out.append(("Rank command", str(meta["command"])))
    if scores:
        out.append(("Scores files", ", ".join(str(p.relative_to(run.root)) if p.is_relative_to(run.root) else str(p)
                                               for p in scores)))
    return out


def _settings_html(items: Sequence[tuple[str, str]], meta: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items)
    return (f'<h2>Settings</h2><table class="settings">{rows}</table><details><summary>Everything rank recorded '
            f"(ranking.csv.meta.json)</summary><pre>{html.escape(json.dumps(meta, indent=2, default=str))}</pre></details>")


def _student_html(student: Any, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """One student's teachers, recommendation (a teacher), lead note and selections."""
    from teachfit.ranking_text import SETTLED, coverage_note, lead_note

    teachers = sorted((r for r in rows if r.get("kind", "teacher") != "selection"), key=lambda r: -float(r["car"]))
    chosen = sorted((r for r in rows if r.get("kind") == "selection"), key=lambda r: -float(r["car"]))
    info = (meta.get("students") or {}).get(str(student)) or {}
    best = teachers[0] if teachers else None
    out = [f"<h2>Ranking for {html.escape(str(student))}</h2>"]
    if best is not None:
        recommended = info.get("recommended") or best["teacher"]
        share = info.get("top_share", best.get("top_share"))
        settled = meta.get("settled", SETTLED)
        beta = f"beta={meta['beta']:g}; " if _finite(meta.get("beta")) else ""
        if _finite(share) and len(teachers) > 1:
            how = f"on top in {share:.0%} of the bootstrap resamples" + (f": not settled, below {settled:.0%}"
                                                                         if share < settled else "")
        else:
            how = "how sure this is was not measured (no bootstrap)" if len(teachers) > 1 else "the only teacher"
        out.append(f"<p>Recommended teacher: <b>{html.escape(str(recommended))}</b> (highest CAR, {beta}{html.escape(how)})</p>")
        data = {"recommended": recommended, "top_share": share,
                "settings": {"settled": settled, "pairs_needed": info.get("pairs_needed")}}
        for note in (lead_note(data), coverage_note(info.get("coverage"))):
            if note:
                out.append(f'<p class="warning">{html.escape(note)}</p>')
        out.append(_ranking_html(teachers, "teacher"))
    if chosen:
        out.append("<h3>Selections</h3><p>Datasets chosen from the teachers' answers by <code>teachfit select</code>: "
                   "ranked by CAR on their own pairs, never recommended as a teacher.</p>")
        out.append(_ranking_html(chosen, "selection", skip=("on top",)))
    return "".join(out)


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>teachfit report</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th{{background:#f2f2f2}}table.settings th{{text-align:left}}table.settings td{{text-align:left}}
.warning{{background:#fff4d6;border-left:4px solid #e0a000;padding:.5em .8em}}img{{max-width:100%;display:block;margin:1em 0}}pre{{background:#f7f7f7;padding:1em;font-size:12px;overflow:auto}}
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
        ranking, meta = read_table(run.ranking_csv)
        for row in ranking:  # a ranking.csv from before selections had their own kind: every row a teacher
            row["kind"] = row.get("kind") or "teacher"
        # best first, whatever the file's order; selections after the teachers
        ranking = sorted(ranking, key=lambda r: (r["kind"] == "selection", -float(r["car"])))
        numbers["ranking"] = ranking
        students = list(dict.fromkeys(r.get("student", "") for r in ranking))
        images["car_ranking"] = car_bars([r for r in ranking if r.get("student", "") == students[0]])
        sections.append("".join(_student_html(s, [r for r in ranking if r.get("student", "") == s], meta)
                                for s in students) + "{car_ranking}")
        sections.append(_settings_html(run_settings(run, ranking, meta), meta))
    if run and run.results_csv.exists() and run.ranking_csv.exists():
        from teachfit.correlate import join, read_rankings, read_truth

        if not run.correlation_csv.exists():
            raise FileNotFoundError(f"{run.correlation_csv} is missing: run `teachfit correlate {run.root}` first")
        table, correlated = read_table(run.correlation_csv)
        column = correlated.get("truth_column", "ap")  # what correlate measured against (--truth-column)
        truth = "AP" if column == "ap" else column
        from teachfit.correlate import few_teachers_warning

        measured = read_truth(run.results_csv, column)
        joined = join(read_rankings([run.ranking_csv]), measured, column)
        rows = [r for teachers in joined.values() for r in teachers]
        bounds = interval_columns(column)
        if bounds:
            for row in rows:
                row["ap_lo"], row["ap_hi"] = row.get(bounds[0]), row.get(bounds[1])
        kinds = {(str(r["student"]), str(r["teacher"])): str(r.get("kind") or "teacher") for r in numbers.get("ranking", [])}
        warning = few_teachers_warning(table)
        every = table  # per student and (several students) their Average rows, all shown in the table
        students = {r["student"] for r in table} - {"Average"}
        table = [r for r in table if r["student"] == ("Average" if len(students) > 1 else next(iter(students), None))]
        defined = [r for r in table if isinstance(r["rho"], float) and math.isfinite(r["rho"])]
        numbers["correlation"] = table
        images["car_vs_ap"] = car_vs_ap(rows, truth)
        if defined:
            from teachfit.ranking_text import METRIC_LABELS

            images["rho_run"] = rho_bars([METRIC_LABELS.get(r["metric"], r["metric"]) for r in defined],
                                         [r["rho"] for r in defined], "rho per metric (this run)", truth)
        images["ap_run"] = ap_bars(rows, f"Measured {truth} per teacher (this run)", "AP (%)" if column == "ap" else column)
        note = "" if defined else f"<p>Every rho is undefined: the measured {truth} (or each metric) is the same for all teachers.</p>"
        warned = f'<p class="warning">{html.escape(warning)}</p>' if warning else ""
        sections.append("<h2>Prediction vs measurement</h2>" + warned + _measured_html(measured, column, truth, kinds)
                        + "{car_vs_ap}" + ("{rho_run}" if defined else note) + "{ap_run}" + _rho_html(every))
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
