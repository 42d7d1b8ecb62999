"""Stage `correlate`: does a metric computed without fine-tuning predict the measured ranking?

For every student, Spearman rho between each metric's teacher ranking and the measured AP
ranking (paper Table 4), with a bootstrap interval over teachers; a sweep of CAR's beta; and
beta chosen by leave-one-teacher-out with the spread of the choices.

A metric's direction (rank.METRIC_DIRECTIONS) is applied first, so rho > 0 always means "this
metric puts the better teachers first".
"""
from __future__ import annotations

import math
from statistics import mean, pstdev
from typing import Any, Sequence

import numpy as np

from teachfit.metrics import bootstrap_draws, car, percentile_interval, spearman
from teachfit.config import CorrelateConfig
from teachfit.rank import METRIC_DIRECTIONS
from teachfit.stage import Stage

CORRELATED = ("car", "reward", "ppl_self", "ifd_self", "rsr_self", "ppl_ref", "ifd_ref", "length", "size_b")
DIRECTIONS = METRIC_DIRECTIONS | {"size_b": +1}
MIN_TEACHERS = 5  # under this many teachers a rank correlation means little (few orderings exist)
BETA_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


def size_from_name(name: str) -> float | None:
    """Parameters in billions read from a model name ('Qwen2.5-7B-Instruct' -> 7, 'smollm2-135m' -> 0.135)."""
    import re

    found = re.findall(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z])", name.lower())
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * (1.0 if unit == "b" else 1e-3)


def join(metric_rows: Sequence[dict[str, Any]], truth_rows: Sequence[dict[str, Any]], column: str = "ap"
         ) -> dict[str, list[dict[str, Any]]]:
    """Per student, the teachers present in both tables: metric columns plus the measured truth
    (`column` of the truth rows, AP by default; kept under the key `ap` whatever its column) and
    `size_b` read from the teacher's name when the table has no size."""
    truth = {(str(r["student"]), str(r["teacher"])): float(r[column]) for r in truth_rows}
    joined: dict[str, list[dict[str, Any]]] = {}
    for row in metric_rows:
        key = (str(row["student"]), str(row["teacher"]))
        if key in truth:
            size = row.get("size_b") if row.get("size_b") not in (None, "") else size_from_name(key[1])
            joined.setdefault(key[0], []).append({**row, "ap": truth[key], "size_b": size})
    return joined


def _values(rows: Sequence[dict[str, Any]], metric: str) -> list[float] | None:
    try:
        values = [DIRECTIONS[metric] * float(r[metric]) for r in rows]
    except (KeyError, TypeError, ValueError):
        return None
    return None if any(math.isnan(v) for v in values) else values


def rho_with_interval(values: Sequence[float], ap: Sequence[float], n_bootstrap: int = 1000, seed: int = 0
                      ) -> tuple[float, float, float]:
    """rho and its 95% percentile-bootstrap interval, resampling teachers with replacement."""
    rho = spearman(values, ap)
    values, ap = np.asarray(values), np.asarray(ap)

    def resampled_rho(idx: np.ndarray) -> float:  # undefined (NaN, dropped) when a resample is constant
        return spearman(values[idx], ap[idx]) if np.ptp(values[idx]) > 0 and np.ptp(ap[idx]) > 0 else math.nan

    return (rho,) + percentile_interval(bootstrap_draws(resampled_rho, len(values), n_bootstrap, seed))


def correlation_table(joined: dict[str, list[dict[str, Any]]], n_bootstrap: int = 1000) -> list[dict[str, Any]]:
    """One row per (student, metric) with rho, its interval and the number of teachers; plus
    an `Average` row per metric over the students (the paper's last row), whose `n_teachers` is the
    fewest teachers any of its students has and `n_students` the students averaged."""
    rows = []
    for student, teachers in joined.items():
        ap = [t["ap"] for t in teachers]
        for metric in CORRELATED:
            values = _values(teachers, metric)
            if values is None or len(teachers) < 3:
                continue
            rho, low, high = rho_with_interval(values, ap, n_bootstrap)
            rows.append({"student": student, "metric": metric, "rho": rho, "ci_low": low, "ci_high": high,
                         "n_teachers": len(teachers), "n_students": 1})
    for metric in CORRELATED:
        averaged = [r for r in rows if r["metric"] == metric and r["student"] != "Average" and not math.isnan(r["rho"])]
        if averaged:
            rows.append({"student": "Average", "metric": metric, "rho": mean(r["rho"] for r in averaged),
                         "ci_low": math.nan, "ci_high": math.nan,
                         "n_teachers": min(r["n_teachers"] for r in averaged), "n_students": len(averaged)})
    return rows


def few_teachers_warning(table: Sequence[dict[str, Any]]) -> str | None:
    """A warning when some student's rho is over fewer than MIN_TEACHERS teachers, else None: with
    n teachers there are only n! orderings, so a perfect rho comes by chance once in n! (1 in 24
    for 4), and the interval over teachers is nearly all of [-1, 1]."""
    counts = [int(r["n_teachers"]) for r in table if r.get("student") != "Average" and r.get("n_teachers") not in (None, "")]
    if not counts or min(counts) >= MIN_TEACHERS:
        return None
    n = min(counts)
    return (f"Only {n} teachers: rho over so few is close to meaningless (a perfect rho comes by chance once in "
            f"{math.factorial(n)} orderings); compare at least {MIN_TEACHERS} teachers before reading anything into it.")


def _car_rho(teachers: Sequence[dict[str, Any]], beta: float) -> float:
    values = [car(t["reward_used"], t["L"], beta) for t in teachers]
    return spearman(values, [t["ap"] for t in teachers])


def beta_sweep(joined: dict[str, list[dict[str, Any]]], grid: Sequence[float] = BETA_GRID) -> list[dict[str, Any]]:
    """rho of CAR at each beta, per student and averaged (needs reward_used and L per teacher)."""
    rows = []
    for beta in grid:
        per_student = {s: _car_rho(t, beta) for s, t in joined.items() if len(t) >= 3}
        rows.append({"beta": beta, **{f"rho[{s}]": v for s, v in per_student.items()},
                     "rho_mean": mean(per_student.values()) if per_student else math.nan})
    return rows


def _best_beta(joined: dict[str, list[dict[str, Any]]], grid: Sequence[float]) -> tuple[float, float]:
    """(mean rho, beta) maximizing mean rho; ties (rho only sees ranks) go to the beta nearest
    the paper's default of 3."""
    scored = [(mean(_car_rho(r, b) for r in joined.values() if len(r) >= 3), b) for b in grid]
    return max(scored, key=lambda item: (round(item[0], 12), -abs(item[1] - 3.0)))


def fit_beta(joined: dict[str, list[dict[str, Any]]], grid: Sequence[float] = BETA_GRID) -> dict[str, Any]:
    """Leave one teacher out: for each held-out teacher, the beta on the grid that maximizes the
    mean rho over students on the remaining teachers; reports the choices and their spread.
    Rank correlation cannot tell apart betas that order the teachers identically; such ties go
    to the beta nearest 3."""
    teachers = sorted({t["teacher"] for rows in joined.values() for t in rows})
    choices = []
    for held_out in teachers:
        kept = {s: [t for t in rows if t["teacher"] != held_out] for s, rows in joined.items()}
        choices.append(_best_beta(kept, grid)[1])
    full = _best_beta(joined, grid)
    return {"beta": full[1], "rho_mean_at_beta": full[0], "loo_choices": choices,
            "loo_mean": mean(choices), "loo_std": pstdev(choices),
            "loo_share_same_as_full": sum(c == full[1] for c in choices) / len(choices)}


def read_rankings(paths: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-teacher metric rows from ranking CSV/JSON files written by `teachfit rank`."""
    import json
    from pathlib import Path

    from teachfit.files import read_table

    rows: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            rows.extend(data["teachers"] if isinstance(data, dict) else data)
        else:
            rows.extend(read_table(path)[0])
    return rows


def read_truth(path: Any, column: str = "ap") -> list[dict[str, Any]]:
    """The finite measured results rows of `path` (read_truth_rows without the rows left out)."""
    return read_truth_rows(path, column)[0]


def read_truth_rows(path: Any, column: str = "ap") -> tuple[list[dict[str, Any]], list[str]]:
    """Measured results rows (student, teacher, `column`, a finite number) and the `file:line` of
    each row left out because its value is NaN or infinite; AP is computed from ae2_lc and ah_wr
    when absent. Rows without `column` are left out when it is not `ap` (other benches in the same
    results.csv) and so are the ifeval and rating rows for `ap`; an unknown column, a value that is
    not a number, two rows for one (student, teacher) (one would silently replace the other) and
    none having a finite value are errors (InputError naming the file and line)."""
    from teachfit.metrics import average_performance
    from teachfit.files import read_table
    from teachfit.records import InputError

    rows = read_table(path)[0]
    first = 2 if str(path).endswith(".csv") else 1  # the line of the first row (CSV: after the header)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    known = column in columns or (column == "ap" and {"ae2_lc", "ah_wr"} <= set(columns))
    if rows and not known:
        near = [c for c in columns if c not in ("student", "teacher", "model", "bench")]
        raise InputError(path, None, f"no column '{column}' (columns: {', '.join(near) or 'none'})")
    out, dropped, seen = [], [], {}
    for number, row in enumerate(rows, start=first):
        if row.get("ap") in (None, "") and row.get("ae2_lc") not in (None, "") and row.get("ah_wr") not in (None, ""):
            row = {**row, "ap": average_performance(_number(path, number, row, "ae2_lc"), _number(path, number, row, "ah_wr"))}
        if row.get(column) in (None, "") and (column != "ap" or row.get("bench") in ("ifeval", "rating")):
            continue
        if any(row.get(k) in (None, "") for k in ("student", "teacher", column)):
            wanted = column if column != "ap" else "ap (or ae2_lc and ah_wr)"
            raise InputError(path, number, f"needs columns student, teacher and {wanted}")
        key = (str(row["student"]), str(row["teacher"]))
        if key in seen:
            raise InputError(path, number, f"a second row for student '{key[0]}' and teacher '{key[1]}' (the first "
                                           f"is line {seen[key]}): one would replace the other; keep one of them")
        seen[key] = number
        value = _number(path, number, row, column)
        if not math.isfinite(value):
            dropped.append(f"{path}:{number}")
            continue
        out.append({**row, column: value})
    if not out:
        nonfinite = f" ({len(dropped)} NaN or infinite)" if dropped else ""
        raise InputError(path, None, f"no row has a finite value in column '{column}'{nonfinite}")
    return out, dropped


def _number(path: Any, line: int, row: dict[str, Any], column: str) -> float:
    """A cell that must be a number (finite or NaN), else an InputError at its line."""
    from teachfit.records import InputError

    value = row.get(column)
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise InputError(path, line, f"column '{column}' must hold numbers to correlate with, got {value!r}"
                                     " (pass a measured column with --truth-column)") from None


def correlation_text(report: dict[str, Any]) -> str:
    """A Table-4-style text table (students x metrics) with the average row, plus the beta sweep."""
    table = report["correlation"]
    students = list(dict.fromkeys(r["student"] for r in table))
    metrics = [m for m in CORRELATED if any(r["metric"] == m for r in table)]
    cell = {(r["student"], r["metric"]): r for r in table}
    width = max(len(s) for s in students) + 2
    truth = report.get("truth_column", "ap")
    lines = [f"Spearman rho vs measured {'AP' if truth == 'ap' else truth} (95% bootstrap interval over teachers)",
             " " * width + "".join(f"{m:>22}" for m in metrics)]
    for student in students:
        parts = []
        for metric in metrics:
            row = cell.get((student, metric))
            if row is None:
                parts.append(f"{'-':>22}")
            elif math.isnan(row["ci_low"]):
                parts.append(f"{row['rho']:>22.4f}")
            else:
                parts.append(f"{row['rho']:>7.4f} [{row['ci_low']:.2f},{row['ci_high']:.2f}]".rjust(22))
        lines.append(f"{student:<{width}}" + "".join(parts))
    warning = few_teachers_warning(table)
    if warning:
        lines.append(warning)
    lines.append("")
    lines.append("CAR beta sweep (mean rho over students): " + ", ".join(
        f"{r['beta']:g}: {r['rho_mean']:.3f}" for r in report["beta_sweep"]))
    lines.extend(_dropped_line(report))
    if "fit_beta" in report:
        fit = report["fit_beta"]
        lines.append(f"fitted beta = {fit['beta']:g} (mean rho {fit['rho_mean_at_beta']:.3f}); leave-one-teacher-out "
                     f"choices mean {fit['loo_mean']:.2f} +- {fit['loo_std']:.2f}, same as the full fit in "
                     f"{fit['loo_share_same_as_full']:.0%} of folds")
    return "\n".join(lines)


def _dropped_line(report: dict[str, Any]) -> list[str]:
    """The line saying which results rows had a NaN or infinite truth value (none: no line)."""
    dropped = report.get("dropped_truth") or {}
    if not dropped.get("count"):
        return []
    shown = ", ".join(dropped["rows"][:5]) + (", ..." if dropped["count"] > 5 else "")
    return [f"{dropped['count']} results rows with a NaN or infinite {report.get('truth_column', 'ap')} left out ({shown})"]


# ---- the stage ---------------------------------------------------------------------------------
def run_correlate(config: CorrelateConfig, run: Any = None, executor: Any = None) -> dict[str, Any]:
    """Rankings + measured results -> Spearman rho per metric (RUN/correlation.csv)."""
    from pathlib import Path

    from teachfit.files import write_table
    from teachfit.records import InputError
    from teachfit.run import RunDir

    run = run or (RunDir(config.run_dir) if config.run_dir else None)
    files = [Path(m) for m in config.metrics] + ([run.ranking_csv] if run and run.ranking_csv.exists() else [])
    truth = Path(config.truth) if config.truth else run.results_csv if run else None
    out = Path(config.out) if config.out else run.correlation_csv if run else None
    if not files or truth is None:
        raise ValueError("give a run directory, or --metrics files and --truth")
    truth_rows, dropped = read_truth_rows(truth, config.truth_column)
    joined = join(read_rankings(files), truth_rows, config.truth_column)
    if not joined:
        raise InputError(truth, None, f"no (student, teacher) appears in both {', '.join(map(str, files))} and {truth}")
    table = correlation_table(joined, config.bootstrap)
    report = {"correlation": table, "beta_sweep": beta_sweep(joined), "truth_column": config.truth_column,
              "dropped_truth": {"count": len(dropped), "rows": dropped}}
    if config.fit_beta:
        report["fit_beta"] = fit_beta(joined)
    if out:
        write_table(out, table, {"metrics": [str(f) for f in files], "truth": str(truth), "truth_column": config.truth_column,
                                 "beta_sweep": report["beta_sweep"], "fit_beta": report.get("fit_beta"),
                                 "dropped_truth": report["dropped_truth"]})
    return report


def _units(config: CorrelateConfig, plan: Any, run: Any) -> list[Any]:
    from dataclasses import replace

    from teachfit.stage import Unit

    return [Unit("correlate", replace(config, run_dir=str(run.root)), inputs=[run.ranking_csv, run.results_csv],
                 outputs=[run.correlation_csv])]


def _plan(config: CorrelateConfig, plan: Any) -> None:
    if "rank" not in plan.sections:  # the measured side: evaluate's results.csv, or one put in the run directory
        plan.fail(("correlate",), "'correlate' needs a 'rank' section (the predicted ranking)")


STAGE = Stage(
    name="correlate", config=CorrelateConfig, run=run_correlate, plan=_plan, units=_units, needs=("rank", "evaluate"),
    help="Spearman rho of each metric's teacher ranking against the measured AP ranking (paper Table 4).",
    summary=lambda report: {"metrics": len(report["correlation"]), "truth_column": report["truth_column"],
                            "dropped_truth": (report.get("dropped_truth") or {}).get("count", 0)},
    line=lambda report: "; ".join([f"{len(report['correlation'])} metrics correlated with {report['truth_column']}"]
                                  + _dropped_line(report)),
    text=lambda report: correlation_text(report),
)
