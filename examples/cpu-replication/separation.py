"""Does a truth measure separate two students? Paired bootstrap over the same prompts.

    .venv/bin/python examples/cpu-replication/separation.py RUN_DIR STUDENT_A STUDENT_B

STUDENT_A/B are checkpoint folder names (RUN/checkpoints/<name>). For IFEval (prompt-level,
loose and strict) and the absolute rating, prints each student's mean and the difference A - B
with its 95% percentile interval from teachfit's one bootstrap (metrics.bootstrap_draws), the
prompts resampled jointly: the two students answered the same prompts, so the paired interval is
narrower than comparing the two students' own intervals. "separated" = the interval excludes 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from teachfit.metrics import bootstrap_draws, percentile_interval


def per_prompt(run: Path, bench: str, student: str, field: str) -> dict[str, float]:
    """prompt -> value of `field` in RUN/evaluations/<bench>/<student>*.jsonl (one file per model)."""
    files = sorted((run / "evaluations" / bench).glob(f"*{student}*.jsonl"))
    if len(files) != 1:
        raise SystemExit(f"expected one {bench} file for {student} in {run / 'evaluations' / bench}, found {len(files)}")
    rows = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    return {str(r.get("key", r.get("id", r.get("prompt")))): float(r[field]) for r in rows}


def compare(a: dict[str, float], b: dict[str, float], scale: float = 1.0) -> str:
    """Means of a and b over their shared prompts and the paired bootstrap interval of a - b."""
    keys = sorted(set(a) & set(b))
    x = np.array([a[k] for k in keys]) * scale
    y = np.array([b[k] for k in keys]) * scale
    draws = bootstrap_draws(lambda idx: float(x[idx].mean() - y[idx].mean()), len(keys), 2000, seed=0)
    low, high = percentile_interval(draws)
    verdict = "separated" if low > 0 or high < 0 else "NOT separated"
    return (f"n={len(keys)}: A {x.mean():.3f}, B {y.mean():.3f}, A-B {x.mean() - y.mean():+.3f} "
            f"[{low:+.3f}, {high:+.3f}] -> {verdict}")


def main() -> None:
    run, a, b = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    for field in ("prompt_loose", "prompt_strict"):
        print(f"IFEval {field} (%):", compare(per_prompt(run, "ifeval", a, field), per_prompt(run, "ifeval", b, field), 100))
    print("rating (1-9):", compare(per_prompt(run, "rating", a, "rating"), per_prompt(run, "rating", b, "rating")))


if __name__ == "__main__":
    main()
