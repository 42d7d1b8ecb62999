"""The benches without a pairwise judge, the truth side of `teachfit correlate`: `--bench ifeval`
(verifiable instruction following, evaluate/ifeval.py) and `--bench rating` (the absolute rating
of the answers, evaluate/rating.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from teachfit.evaluate import ifeval, rating
from teachfit.evaluate.results import result_labels

JUDGE_FREE = ("ifeval", "rating")


def run_truth(config: Any, out: Path, results_csv: Path) -> dict[str, Any]:
    """Dispatch `evaluate --bench ifeval | rating` (an EvaluateConfig); returns the report."""
    if not config.model and not config.answers:
        raise ValueError("give --model (its answers are generated) or --answers FILE (answers made elsewhere)")
    run = ifeval.run_ifeval if config.bench == "ifeval" else rating.run_rating
    return run(config, out, result_labels(config), results_csv)


def summary_line(row: dict[str, Any]) -> str:
    """The CLI's one line for a results row of --bench ifeval or rating."""
    return ifeval.summary_line(row) if row["bench"] == "ifeval" else rating.summary_line(row)
