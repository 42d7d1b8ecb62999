"""The embedded default: the whole main job, offline, on the packaged models (DESIGN section 5).

instructions (shipped) -> 3 packaged teachers + a sampling variant -> scored for the packaged
Gemma-3-270M base student (loss) with a generative-judge reward -> ranked by CAR. Every step
reuses what an earlier run finished.
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

STUDENT = "packaged:gemma3-270m"
JUDGE = "packaged:qwen2.5-coder-1.5b-instruct"
REFERENCE = "packaged:smollm2-135m-instruct"  # no GPT-2 ships offline: the smallest model stands in
TEACHERS = (
    "packaged:smollm2-135m-instruct",
    "packaged:smollm2-135m-instruct?temperature=0.8&top_p=0.95",
    "packaged:qwen2.5-coder-0.5b-instruct",
    "packaged:qwen2.5-coder-1.5b-instruct",
)


def demo_instructions_path() -> Path:
    """The project's own instruction set (60 instructions, 12 categories)."""
    return Path(str(resources.files("teachfit").joinpath("data/instructions/demo.jsonl")))


def pick_subset(instructions: list[Any], per_category: int) -> list[Any]:
    """The first `per_category` instructions of each category, in file order."""
    taken: dict[str, int] = {}
    chosen = []
    for item in instructions:
        if taken.get(item.category, 0) < per_category:
            chosen.append(item)
            taken[item.category] = taken.get(item.category, 0) + 1
    return chosen


def stored_responses() -> list[Path]:
    """The shipped demo datasets (generated once by `make demo`; each record keeps its settings)."""
    folder = Path(str(resources.files("teachfit").joinpath("data/demo_responses")))
    return sorted(folder.glob("*.jsonl"))


def run_demo(run_dir: str | Path = "runs/demo", per_category: int = 2, max_new_tokens: int = 256,
             beta: float = 3.0, show_progress: bool = True, stored: bool = False) -> dict[str, Any]:
    """Run generate -> score -> rank on the packaged models (or score the shipped responses when
    `stored`); returns timings and the ranking."""
    from teachfit.forward import BatchPlan
    from teachfit.generate import generate, parse_teacher
    from teachfit.instructions import read_instructions
    from teachfit.models.base import GenerationSettings
    from teachfit.rank import markdown_table, rank_teachers
    from teachfit.records import read_table, write_table
    from teachfit.score import ScoreOptions, score_files

    run_dir = Path(run_dir)
    timings: dict[str, float] = {}
    instructions = pick_subset(read_instructions([demo_instructions_path()]), per_category)
    defaults = GenerationSettings(max_new_tokens=max_new_tokens)
    started = time.perf_counter()
    if stored:
        import shutil

        (run_dir / "responses").mkdir(parents=True, exist_ok=True)
        for path in stored_responses():
            shutil.copyfile(path, run_dir / "responses" / path.name)
        summaries = [{"dataset": p.stem, "stored": True} for p in stored_responses()]
    else:
        summaries = generate(instructions, [parse_teacher(t, defaults) for t in TEACHERS], run_dir,
                             {"n_ctx": 4096}, show_progress=show_progress)
    timings["generate"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    scores_path = run_dir / "scores" / "scores.parquet"
    meta = score_files([run_dir], scores_path, STUDENT, reference=REFERENCE, reward_model=JUDGE, reward_kind="judge",
                       options=ScoreOptions(max_length=2048, token_budget=8192), show_progress=show_progress,
                       cache_dir=run_dir / ".cache" / "scores")
    timings["score"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    rows, _ = read_table(scores_path)
    ranking = rank_teachers(rows, beta=beta, student=STUDENT)
    write_table(run_dir / "ranking.csv", ranking.rows, ranking.settings)
    (run_dir / "ranking.json").write_text(json.dumps(ranking.to_dict(), indent=2))
    timings["rank"] = round(time.perf_counter() - started, 1)
    summary = {"instructions": len(instructions), "teachers": list(TEACHERS), "student": STUDENT, "judge": JUDGE,
               "reference": REFERENCE, "timings_seconds": timings, "generation": summaries,
               "score_counts": meta["counts"], "recommended": ranking.recommended}
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(markdown_table(ranking))
    print(f"\nTimes (s): generate {timings['generate']}, score {timings['score']}, rank {timings['rank']}. "
          f"Results in {run_dir}/ (ranking.csv, ranking.json, scores/, responses/).")
    return summary


def main() -> None:
    """`python -m teachfit.demo [--stored]`: what `make demo` runs."""
    import sys

    run_demo(stored="--stored" in sys.argv[1:])


if __name__ == "__main__":
    main()
