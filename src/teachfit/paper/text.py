"""Plain-text rendering of `teachfit paper`'s sections for the terminal."""
from __future__ import annotations

from typing import Any


def _ap_table(grid: list[dict[str, Any]]) -> list[str]:
    students = list(dict.fromkeys(r["student"] for r in grid))
    teachers = list(dict.fromkeys(r["teacher"] for r in grid))
    ap = {(r["student"], r["teacher"]): r["ap"] for r in grid}
    lines = ["AP = (AE2 LC + AH WR) / 2 for every student x teacher (Figure 2, from Table 6), %:",
             f"{'teacher':<28}" + "".join(f"{s:>23}" for s in students)]
    for teacher in teachers:
        lines.append(f"{teacher:<28}" + "".join(f"{ap[(s, teacher)]:>23.3f}" for s in students))
    return lines


def render(sections: dict[str, Any]) -> str:
    """All sections as text."""
    lines = _ap_table(sections["ap_grid"]) + ["", "Finding 1, the Larger Models' Paradox (pairs the paper names):"]
    for row in sections["paradox_summary"]:
        lost = f" (larger wins for {', '.join(row['losing_students'])})" if row["losing_students"] else ""
        lines.append(f"  {row['smaller']} beats {row['larger']} for {row['students_where_smaller_wins']}/"
                     f"{row['students']} students{lost}")
    pairs = sections["paradox_pairs"]
    wins = sum(r["smaller_wins"] for r in pairs)
    lines.append(f"  all same-family larger-vs-smaller comparisons: the smaller teacher wins {wins} of {len(pairs)}")
    lines += ["", "Finding 2, same family helps (family's mean AP / student's mean AP; own student vs the others):"]
    for row in sections["own_family_advantage"]:
        lines.append(f"  {row['student']:<24} {row['family']:<10} {row['relative_ap']:.3f} vs "
                     f"{row['others_relative_ap']:.3f} (advantage {row['advantage']:+.3f})")
    lines += ["", "Spearman rho between teacher size and AP:"]
    lines += [f"  {r['student']:<24} {r['rho']:+.4f}" for r in sections["size_vs_ap"]]
    arithmetic = [r for r in sections["table4_arithmetic"] if "off_by" in r]
    odd = [r for r in arithmetic if abs(r["off_by"]) > 0.06]
    lines += ["", f"Table 4 arithmetic (n = 19): {len(arithmetic) - len(odd)} of {len(arithmetic)} rhos equal "
              "1 - 6 sum d^2 / 6840 for an even integer sum d^2 (within 4-decimal rounding)"]
    lines += [f"  not: {r['student']} {r['metric']} rho {r['rho']} -> sum d^2 = {r['implied_sum_d2']:.2f} "
              "(ties, or a rounding in the paper)" for r in odd]
    averages = [r for r in sections["table4_arithmetic"] if r["student"] == "Average"]
    worst = max(abs(r["rho"] - r["recomputed"]) for r in averages)
    lines.append(f"  average row recomputed from the five students: largest difference {worst:.5f}")
    checks = sections["reported_ap_checks"]
    worst = max(abs(r["reported_ap"] - r["recomputed_ap"]) for r in checks)
    lines.append(f"Tables 2 and 3: reported AP = (LC + AH) / 2 within {worst:.4f} for all {len(checks)} rows")
    return "\n".join(lines)
