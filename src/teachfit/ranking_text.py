"""A ranking (rank.Ranking.to_dict()) as text for the terminal: the Markdown table of teachers,
the selections' own table, the recommendation, and what the reader should know (a lead not yet
settled and the pairs that would settle it, uneven coverage). report.py shows the same words."""
from __future__ import annotations

import math
from typing import Any

def lacks(coverage: dict[str, Any]) -> str:
    """Which teacher lacks how many of the instructions, in words."""
    return ", ".join(f"{t} lacks {n} of {coverage['instructions']}" for t, n in coverage["missing"].items() if n)


def coverage_note(coverage: dict[str, Any] | None) -> str | None:
    """One line saying that teachers cover different instructions and what was compared, or None."""
    if not coverage or coverage["shared"] == coverage["instructions"]:
        return None
    shared = coverage["shared"]
    which = f"{shared} instruction{'' if shared == 1 else 's'} all teachers share"
    how = (f"compared on the {which} (--no-shared-only: each teacher on its own pairs)" if coverage["shared_only"]
           else f"each teacher on its own pairs (--shared-only: compared on the {which})")
    return f"Teachers cover different instructions ({lacks(coverage)}, missing or skipped): {how}."


TABLE_COLUMNS = (
    ("teacher", lambda r: str(r["teacher"])),
    ("CAR [95% CI]", lambda r: f"{r['car']:.3f}" + (f" [{r['car_ci_low']:.3f}, {r['car_ci_high']:.3f}]"
                                                    if _finite(r.get("car_ci_low")) else "")),
    ("on top", lambda r: f"{r['top_share']:.0%}" if _finite(r.get("top_share")) else "-"),
    ("reward", lambda r: f"{r['reward']:.2f}"), ("L (nats)", lambda r: f"{r['L']:.3f}"),
    ("PPL-Self", lambda r: f"{r['ppl_self']:.2f}"), ("IFD-Self", lambda r: f"{r['ifd_self']:.3f}"),
    ("RSR-Self", lambda r: f"{r['rsr_self']:.2f}"), ("PPL-Ref", lambda r: f"{r['ppl_ref']:.2f}"),
    ("IFD-Ref", lambda r: f"{r['ifd_ref']:.3f}"), ("length", lambda r: f"{r['length']:.0f}"),
)


# Readable names of the metrics (correlate's rho table, the report's plots), as in TABLE_COLUMNS.
METRIC_LABELS = {"car": "CAR", "reward": "reward", "ppl_self": "PPL-Self", "ifd_self": "IFD-Self",
                 "rsr_self": "RSR-Self", "ppl_ref": "PPL-Ref", "ifd_ref": "IFD-Ref", "rsr_ref": "RSR-Ref",
                 "length": "length", "size_b": "size (B params)"}
SETTLED = 0.8  # rank.SETTLED: the share of resamples on top under which a lead is not settled


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def shown_columns(rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """TABLE_COLUMNS that every row has a value for (less `skip`)."""
    return [(name, show) for name, show in TABLE_COLUMNS
            if name not in skip and rows and all(_can_show(show, r) for r in rows)]


def _markdown(rows: list[dict[str, Any]], columns: list[tuple[str, Any]], first: str = "teacher") -> list[str]:
    names = [first if name == "teacher" else name for name, _ in columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return lines + ["| " + " | ".join(show(row) for _, show in columns) + " |" for row in rows]


def recommendation_line(data: dict[str, Any]) -> str:
    """`Recommended teacher: ...` with how often it stays on top, and whether that settles it."""
    settings, share = data["settings"], data.get("top_share")
    settled = settings.get("settled", SETTLED)
    if not _finite(share) or not settings.get("n_bootstrap"):
        how = "no bootstrap: how sure this is was not measured"
    else:
        how = f"on top in {share:.0%} of {settings['n_bootstrap']} bootstrap resamples"
        if share < settled:
            how += f": not settled, below {settled:.0%}"
    return (f"Recommended teacher: {data['recommended']} for {settings.get('student')} (highest CAR, "
            f"beta={settings['beta']:g}; {how})")


def lead_note(data: dict[str, Any]) -> str | None:
    """What the pairs_needed estimate says: for a lead that is not settled, how many pairs per teacher
    would settle it (and how many more than scored); for an asked --target, whether enough are scored."""
    settings = data["settings"]
    needed = settings.get("pairs_needed")
    if not needed:
        return None
    scored = min(needed["n_pairs"].values()) if needed.get("n_pairs") else None
    target = needed["target"]

    def more(n: int) -> str:
        return f" ({n - scored} more than the {scored} scored)" if scored is not None and n > scored else ""

    if needed.get("pairs_needed"):
        estimate = f"about {needed['pairs_needed']} pairs per teacher{more(needed['pairs_needed'])}"
    elif needed.get("optimistic_pairs_needed"):
        estimate = (f"at least {needed['optimistic_pairs_needed']} pairs per teacher"
                    f"{more(needed['optimistic_pairs_needed'])}, likely more: {needed.get('limiting_teacher')} "
                    "is not yet separated from it")
    else:
        estimate = (f"more pairs than can be estimated: {needed.get('limiting_teacher')} is not yet separated "
                    "from it (treat the two as tied, or score many more pairs)")
    share = data.get("top_share")
    if _finite(share) and share < settings.get("settled", SETTLED):
        return (f"The lead is not settled: {data['recommended']} is on top in only {share:.0%} of resamples. "
                f"To be on top in {target:.0%} of resamples it needs {estimate}.")
    return (f"To be on top in {target:.0%} of resamples: {estimate}; "
            f"{'enough scored' if needed.get('enough') else 'score more'}.")


def ranking_text(data: dict[str, Any]) -> str:
    """A ranking (Ranking.to_dict()) as a Markdown table of teachers, the selections' own table and
    the recommendation (always a teacher), for the terminal."""
    rows = data["teachers"]
    lines = _markdown(rows, shown_columns(rows))
    settings = data["settings"]
    lines.append("")
    lines.append(recommendation_line(data))
    for note in (lead_note(data), coverage_note(settings.get("coverage"))):
        if note:
            lines.append(note)
    selections = data.get("selections") or []
    if selections:
        lines += ["", "Selections (datasets chosen from the teachers' answers: ranked by CAR on their own pairs, "
                      "never recommended as a teacher):", ""]
        lines += _markdown(selections, shown_columns(selections, skip=("on top",)), first="selection")
    return "\n".join(lines)


def _can_show(show: Any, row: dict[str, Any]) -> bool:
    """Whether a column has a value for this row (absent or NaN columns are left out)."""
    try:
        return not show(row).startswith("nan")
    except (KeyError, TypeError, ValueError):
        return False


def markdown_table(ranking: Any) -> str:
    """The ranking as a Markdown table for the terminal (see ranking_text)."""
    return ranking_text(ranking.to_dict())
