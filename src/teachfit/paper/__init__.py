"""The paper's published numbers (Tables 2, 3, 4, 6) carried as data, and their analysis.

Everything here is recomputed from the tables in `data/`: AP per cell (Figure 2), every
larger-vs-smaller pair of one family (Finding 1, the Larger Models' Paradox), the same-family
effect (Finding 2), rho between teacher size and AP, and the arithmetic of Table 4.
"""
from __future__ import annotations

import itertools
import json
from functools import lru_cache
from importlib import resources
from statistics import mean
from typing import Any

from teachfit.metrics import average_performance, spearman

# The pairs the paper names for Finding 1 (smaller, larger).
NAMED_PARADOX_PAIRS = (
    ("Gemma-2-9b-it", "Gemma-2-27b-it"),
    ("Phi-3-small-128k-instruct", "Phi-3-medium-128k-instruct"),
    ("Llama-3.1-70B-Instruct", "Llama-3.1-405B-Instruct"),
    ("Qwen2-7B-Instruct", "Qwen2-72B-Instruct"),
    ("Qwen2.5-7B-Instruct", "Qwen2.5-32B-Instruct"),
)
# Each student's own family among the teachers (Finding 2 names the first three).
STUDENT_FAMILY = {"Qwen2-1.5B": "Qwen2", "Gemma 2-2B": "Gemma 2", "Qwen2.5-3B": "Qwen2.5",
                  "Llama-3.2-3B": "Llama 3.1", "Llama-3.1-Minitron-4B": "Llama 3.1"}


@lru_cache(maxsize=None)
def load_table(name: str) -> dict[str, Any]:
    """One of the carried tables: 'table2', 'table3', 'table4', 'table6'."""
    text = resources.files("teachfit.paper").joinpath(f"data/{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def ap_grid() -> list[dict[str, Any]]:
    """Every (student, teacher) cell of Table 6 with AP = (AE2 LC + AH WR) / 2 (Figure 2)."""
    table = load_table("table6")
    rows = []
    for student in table["students"]:
        for teacher in table["teachers"]:
            cell = table["scores"][student][teacher["name"]]
            rows.append({"student": student, "teacher": teacher["name"], "family": teacher["family"],
                         "size_b": teacher["size_b"], **cell, "ap": average_performance(cell["ae2_lc"], cell["ah_wr"])})
    return rows


def _ap_lookup() -> dict[tuple[str, str], float]:
    return {(r["student"], r["teacher"]): r["ap"] for r in ap_grid()}


def paradox_pairs() -> list[dict[str, Any]]:
    """Every larger-vs-smaller pair of teachers within a family, for every student: does the
    smaller teacher give the higher AP?"""
    table, ap = load_table("table6"), _ap_lookup()
    named = set(NAMED_PARADOX_PAIRS)
    rows = []
    for family, members in itertools.groupby(table["teachers"], key=lambda t: t["family"]):
        for small, large in itertools.combinations(sorted(members, key=lambda t: t["size_b"]), 2):
            for student in table["students"]:
                a, b = ap[(student, small["name"])], ap[(student, large["name"])]
                rows.append({"family": family, "smaller": small["name"], "larger": large["name"], "student": student,
                             "ap_smaller": a, "ap_larger": b, "smaller_wins": a > b,
                             "named_in_paper": (small["name"], large["name"]) in named})
    return rows


def paradox_summary() -> list[dict[str, Any]]:
    """For each pair the paper names: on how many of the 5 students the smaller teacher won."""
    out = []
    for small, large in NAMED_PARADOX_PAIRS:
        cells = [r for r in paradox_pairs() if r["smaller"] == small and r["larger"] == large]
        out.append({"smaller": small, "larger": large, "students_where_smaller_wins": sum(r["smaller_wins"] for r in cells),
                    "students": len(cells), "losing_students": [r["student"] for r in cells if not r["smaller_wins"]]})
    return out


def family_effect() -> list[dict[str, Any]]:
    """Finding 2: for each student and teacher family, the family's mean AP relative to the
    student's mean AP over all teachers; `own_family` marks the student's own family."""
    grid = ap_grid()
    rows = []
    for student in load_table("table6")["students"]:
        cells = [r for r in grid if r["student"] == student]
        overall = mean(r["ap"] for r in cells)
        for family in dict.fromkeys(r["family"] for r in cells):
            family_ap = mean(r["ap"] for r in cells if r["family"] == family)
            rows.append({"student": student, "family": family, "family_mean_ap": family_ap,
                         "relative_to_student_mean": family_ap / overall,
                         "own_family": STUDENT_FAMILY.get(student) == family})
    return rows


def own_family_advantage() -> list[dict[str, Any]]:
    """For each student's own family: its relative AP for that student vs the mean relative AP
    the same family gets with the other students (> 0 means the family helps its own)."""
    effect = family_effect()
    out = []
    for student, family in STUDENT_FAMILY.items():
        mine = next(r["relative_to_student_mean"] for r in effect if r["student"] == student and r["family"] == family)
        others = mean(r["relative_to_student_mean"] for r in effect if r["family"] == family and r["student"] != student)
        out.append({"student": student, "family": family, "relative_ap": mine, "others_relative_ap": others,
                    "advantage": mine - others})
    return out


def size_vs_ap() -> dict[str, float]:
    """Spearman rho between teacher size (parameters) and AP, per student."""
    grid = ap_grid()
    return {student: spearman([r["size_b"] for r in grid if r["student"] == student],
                              [r["ap"] for r in grid if r["student"] == student])
            for student in load_table("table6")["students"]}


def table4_arithmetic() -> list[dict[str, Any]]:
    """Each Table 4 rho with the sum of squared rank differences it implies for n = 19 untied
    ranks, sum d^2 = (1 - rho) n (n^2 - 1) / 6 (an even integer when the rho is exact), and the
    average row recomputed."""
    table = load_table("table4")
    n = table["n_teachers"]
    rows = []
    for student, values in table["rho"].items():
        for metric, rho in zip(table["metrics"], values):
            implied = (1 - rho) * n * (n * n - 1) / 6
            rows.append({"student": student, "metric": metric, "rho": rho, "implied_sum_d2": implied,
                         "nearest_even": 2 * round(implied / 2), "off_by": implied - 2 * round(implied / 2)})
    for j, metric in enumerate(table["metrics"]):
        recomputed = mean(values[j] for values in table["rho"].values())
        rows.append({"student": "Average", "metric": metric, "rho": table["average"][j], "recomputed": recomputed})
    return rows


def reported_ap_checks() -> list[dict[str, Any]]:
    """Tables 2 and 3 report AP next to LC and AH: recompute (LC + AH) / 2 for each row."""
    rows = []
    for name, (lc, _, ah, ap) in load_table("table2")["rows"].items():
        rows.append({"table": 2, "row": name, "reported_ap": ap, "recomputed_ap": average_performance(lc, ah)})
    for student, methods in load_table("table3")["rows"].items():
        for method, (lc, _, ah, ap) in methods.items():
            rows.append({"table": 3, "row": f"{student} {method}", "reported_ap": ap,
                         "recomputed_ap": average_performance(lc, ah)})
    return rows
