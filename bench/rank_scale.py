"""rank and select --by reward on a scores table of the paper's size (2M pairs: issue 21).

Scoring 2M pairs for real takes hours on a small machine, so the scores table is written here
directly, in the shape `teachfit score --metrics car --reward-column` writes (bench/scale.py's
Zoo inputs: 20 generators answer every instruction; columns id, teacher, loss_self, ppl_self,
mean_rank_self, rsr_self, n_response_tokens, truncated, reward; the metadata names the student).
Each teacher's loss and reward are drawn around a mean of its own; `--close` gives every teacher
the same means, so the lead is not settled and rank also estimates the pairs needed (from the
same bootstrap's draws). Each step runs in its own process: wall seconds, CPU seconds (user + system: on a
shared machine the wall time depends on the neighbours, the CPU time much less) and peak RSS
(VmHWM: getrusage would carry this parent's own peak into each child).
Steps:
  rank        the CLI, as bench/scale.py runs it;
  select      `select --by reward`'s choice alone: the table read as columns (files.read_table_columnar,
              as run_select reads it) and select.select_pairs on that pyarrow.Table; no response text;
  select-cli  the whole `teachfit select --by reward --out selection.jsonl`: the scores read, the choice,
              the 2M response texts streamed from bench/scale.py's Zoo file (written into --work when
              absent, ~415 MB at 2M pairs; this table's ids and teachers are that file's) and the
              selection written. Its scores are a copy of the table whose metadata names the Zoo file.
              The student they name (hf:bench-student) is no model: offline (bench/scale.py sets it),
              select's try to load its tokenizer fails in seconds and the card says the template is unknown.

    .venv/bin/python bench/rank_scale.py [--pairs 2000000] [--close] [--steps rank,select,select-cli] [--work DIR]
                                         [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import GENERATORS, peak_rss_mb, write_zoo  # noqa: E402  (bench/ is not a package)


def in_child(step: str, *args: str) -> dict:
    """Run `step` of this script in a fresh process: its wall and CPU seconds and its peak RSS."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", step, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"process_seconds": time.perf_counter() - started}


def child(step: str, args: list[str]) -> None:
    """One step, in this process; prints its report as the last line of stdout."""
    started, cpu = time.perf_counter(), time.process_time()
    if step in ("rank", "select-cli"):
        from teachfit.cli import main

        sys.argv = ["teachfit", step.removesuffix("-cli"), *args]
        try:
            main()
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise
    else:
        from teachfit.files import read_table_columnar
        from teachfit.select import select_pairs

        table, _ = read_table_columnar(args[0])  # a pyarrow.Table: no dict per pair
        selection = select_pairs(table, "reward")
        assert selection.summary["n_selected"] == selection.summary["n_instructions"]
    print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
                      "peak_rss_mb": peak_rss_mb()}))


def write_scores(path: Path, pairs: int, close: bool = False, seed: int = 0) -> None:
    """A scores table of `pairs` rows: pairs / 20 instructions (ids u0, u1, ...), each answered by every generator."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    per = pairs // len(GENERATORS)
    n = per * len(GENERATORS)
    teacher = np.tile(np.arange(len(GENERATORS)), per)
    shift = np.zeros(len(GENERATORS)) if close else np.linspace(-0.3, 0.3, len(GENERATORS))
    loss = np.abs(rng.normal(6.4, 0.1, n) + 0.05 * shift[teacher])
    reward = np.round(rng.normal(0.0, 2.0, n) + shift[teacher], 3)
    mean_rank = rng.uniform(50, 120, n)
    ids = pa.array(np.repeat(np.char.add("u", np.arange(per).astype(str)), len(GENERATORS)))
    table = pa.table({"id": ids, "teacher": pa.DictionaryArray.from_arrays(teacher.astype(np.int32), GENERATORS)
                      .cast(pa.string()), "loss_self": loss, "ppl_self": np.exp(loss), "mean_rank_self": mean_rank,
                      "rsr_self": mean_rank / loss, "n_response_tokens": rng.integers(40, 400, n),
                      "truncated": np.zeros(n, dtype=bool), "reward": reward})
    metadata = {"stage": "score", "scorers": [{"role": "self", "model": {"spec": "hf:bench-student"}}]}
    pq.write_table(table.replace_schema_metadata({"teachfit": json.dumps(metadata)}), path)


def scores_with_texts(scores: Path, work: Path, pairs: int) -> Path:
    """A copy of `scores` whose metadata names bench/scale.py's Zoo file of `pairs` pairs as its
    inputs (the file is written into `work` when absent), so that `teachfit select` finds the texts."""
    import pyarrow.parquet as pq

    zoo = work / f"zoo-{pairs}.parquet"
    if not zoo.exists():
        write_zoo(zoo, pairs)
    out = scores.with_name(scores.stem + "-with-texts.parquet")
    if not out.exists():
        table = pq.read_table(scores)
        metadata = json.loads(table.schema.metadata[b"teachfit"]) | {"inputs": [str(zoo)]}
        pq.write_table(table.replace_schema_metadata({"teachfit": json.dumps(metadata)}), out)
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--close", action="store_true", help="teachers with equal means: an unsettled lead")
    parser.add_argument("--work", default=None, help="folder for the table and outputs (default: a temporary one)")
    parser.add_argument("--steps", default="rank,select", help="comma-separated: rank, select, select-cli")
    parser.add_argument("--json", default=None, help="also write the measurements here")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(options.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        scores = work / f"scores-{options.pairs}{'-close' if options.close else ''}.parquet"
        if not scores.exists():
            write_scores(scores, options.pairs, options.close)
        report = {"pairs": options.pairs, "close": options.close}
        steps = options.steps.split(",")
        if "rank" in steps:
            report["rank"] = in_child("rank", str(scores), "--json-out", str(work / "ranking.json"))
        if "select" in steps:
            report["select"] = in_child("select", str(scores))
        if "select-cli" in steps:
            with_texts = scores_with_texts(scores, work, options.pairs)
            report["select-cli"] = in_child("select-cli", str(with_texts), "--by", "reward",
                                            "--out", str(work / "selection.jsonl"))
        print(json.dumps(report))
        if options.json:
            Path(options.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
