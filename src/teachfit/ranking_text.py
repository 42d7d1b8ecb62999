"""A ranking (rank.Ranking.to_dict()) as text for the terminal: the Markdown table of teachers,
the recommendation, and what the reader should know (uneven coverage, pairs still needed)."""
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def ranking_text(data: dict[str, Any]) -> str:
    """A ranking (Ranking.to_dict()) as a Markdown table and the recommendation, for the terminal."""
    rows = data["teachers"]
    columns = [(name, show) for name, show in TABLE_COLUMNS if all(_can_show(show, r) for r in rows)]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(show(row) for _, show in columns) + " |" for row in rows]
    settings = data["settings"]
    lines.append("")
    lines.append(f"Recommended teacher: {data['recommended']} for {settings.get('student')} (highest CAR, "
                 f"beta={settings['beta']:g}; on top in {data['top_share']:.0%} of {settings['n_bootstrap']} "
                 "bootstrap resamples)")
    note = coverage_note(settings.get("coverage"))
    if note:
        lines.append(note)
    needed = settings.get("pairs_needed")
    if needed:
        estimate = (f"about {needed['pairs_needed']} pairs per teacher" if needed.get("pairs_needed")
                    else f"more pairs than scored (not yet separated from {needed.get('limiting_teacher')})")
        lines.append(f"To be on top in {needed['target']:.0%} of resamples: {estimate}; "
                     f"{'enough scored' if needed.get('enough') else 'score more'}.")
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
