"""Rows of a scores table (one dict per pair): a column as floats, the rows of each teacher."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def number(row: dict[str, Any], name: str) -> float:
    """row[name] as a float (NaN when missing); anything else than a number is a clear ValueError."""
    value = row.get(name)
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"column '{name}' holds {str(value)[:40]!r}, not a number "
                         f"(pair {row.get('id')!r} of teacher {row.get('teacher')!r})") from None


def column(rows: Sequence[dict[str, Any]], name: str) -> np.ndarray:
    """One column of the rows as floats (NaN where missing)."""
    return np.array([number(r, name) for r in rows], dtype=float)


def group_by_teacher(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by their `teacher` field, teachers in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["teacher"]), []).append(row)
    return groups
