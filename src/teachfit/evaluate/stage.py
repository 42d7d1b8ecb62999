"""The `evaluate` stage: each checkpoint's answers to each bench, judged -> RUN/evaluations/, results.csv.

In a study every trained checkpoint is evaluated on every bench of the `evaluate` section (one
item per bench); each (bench, checkpoint) is a unit whose outputs are its summary file and its
row of results.csv.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from teachfit.config import EvaluateConfig, bench_name
from teachfit.ledger import ledger_line, read_prices, write_ledger
from teachfit.stage import CsvRows, Plan, Stage, Unit

NEEDS_NO_JUDGE = ("ifeval",)  # benches answered without a judge


def run_evaluate(config: EvaluateConfig, run: Any = None, executor: Any = None) -> dict[str, Any]:
    """A model's answers judged against the baseline (or checked, or rated) -> evaluations/, results.csv."""
    from teachfit.evaluate.judge_free import JUDGE_FREE as NO_BASELINE, run_truth
    from teachfit.evaluate.pairwise import run_evaluation
    from teachfit.evaluate.results import result_labels

    if not config.out and run is None:
        raise ValueError("give --out (a run directory or an output folder)")
    out = Path(config.out) if config.out else run.evaluations_dir
    results_csv = run.results_csv if run else out / "results.csv"
    prices = read_prices(config.prices)  # a bad price table stops the run before any model loads
    if config.bench in NO_BASELINE:  # IFEval, or the absolute rating: no baseline, no pairwise judge
        report = run_truth(config, out, results_csv)
    elif not config.model or not config.judge:
        raise ValueError("give --model and --judge")
    else:
        report = run_evaluation(config, out, result_labels(config), results_csv,
                                run.cache("judgments") if run else None)
    ledger = write_ledger(run.root if run else out, prices)  # a run's ledger.csv, or the output folder's
    return report | {"ledger": [r for r in ledger if r["stage"] == "evaluate"]}


def _plan(items: list[EvaluateConfig], plan: Plan) -> None:
    """Each item has a judge where its bench needs one, and one item per bench (results.csv keeps
    one row per (model, bench))."""
    from teachfit.models import ModelSpec

    listed = isinstance(plan.raw.get("evaluate"), list)
    benches: dict[str, tuple] = {}
    for index, item in enumerate(items):
        where = ("evaluate", index) if listed else ("evaluate",)
        if item.judge:
            try:
                ModelSpec.parse(item.judge)
            except ValueError as error:
                plan.fail(where + ("judge",), str(error))
        elif item.bench not in NEEDS_NO_JUDGE:
            plan.fail(where, f"'evaluate' needs 'judge' for bench '{item.bench}'")
        name = bench_name(item.bench)
        if name in benches:
            first = plan.line(benches[name] + ("bench",))
            plan.fail(where + ("bench",), f"a second evaluate item for bench '{name}' (first at line {first}); "
                                          "one item per bench")
        benches[name] = where
    if "train" not in plan.sections:
        plan.fail(("evaluate",), "'evaluate' needs a 'train' section (its checkpoints are the models evaluated)")


def _units(items: list[EvaluateConfig], plan: Plan, run: Any) -> list[Unit]:
    from teachfit.teachers import student_name
    from teachfit.train import checkpoints

    units = []
    for item in items:
        for student, dataset in checkpoints(plan):
            checkpoint = run.checkpoint(student_name(student), dataset)
            model = f"hf:{checkpoint}"
            job = replace(item, model=model, out=str(run.evaluations_dir))
            bench = bench_name(item.bench)
            inputs = [checkpoint / run.CHECKPOINT_METADATA] + ([Path(item.ifeval_prompts)] if item.ifeval_prompts else [])
            outputs = [run.evaluations_dir / f"scores-{checkpoint.name}--{bench}.json",
                       CsvRows(run.results_csv, (("model", model), ("bench", bench)))]
            units.append(Unit(f"evaluate-{bench}-{checkpoint.name}", job, inputs=inputs, outputs=outputs,
                              work=f"answers and judgments for {checkpoint.name} on {bench}"))
    return units


def _line(report: dict[str, Any]) -> str:
    """The scores (see _scores_line), then the evaluate rows of the ledger: tokens in and out per model."""
    tokens = ledger_line(report.get("ledger") or [], "evaluate")
    return _scores_line(report["results"]) + (f" | {tokens}" if tokens else "")


def _scores_line(r: dict[str, Any]) -> str:
    """IFEval's and the rating's summary line, or the pairwise numbers (AE2 WR and LC, AH WR, AP)."""
    if r["bench"] in ("ifeval", "rating"):
        from teachfit.evaluate.judge_free import summary_line

        return f"{summary_line(r)} ({r['seconds']}s)"

    def number(key: str) -> str:
        return f"{r[key]:.2f}" if isinstance(r.get(key), float) else "-"

    return (f"AE2 WR {number('ae2_wr')} (se {number('ae2_wr_se')})  LC {number('ae2_lc')} [{r.get('lc_formula', '-')}]  "
            f"AH WR {number('ah_wr')} [{number('ah_ci_low')}, {number('ah_ci_high')}]  AP {number('ap')}  "
            f"(unparsable: {r.get('unparsable_ae2', 0)} AE2, {r.get('unparsable_ah', 0)} AH; {r['seconds']}s)")


def _failed(report: dict[str, Any]) -> str | None:
    r = report["results"]
    failed = r.get("unparsable_ae2", 0) + r.get("unparsable_ah", 0)
    if failed and not r.get("n_ae2", 0) + r.get("n_ah", 0):
        return f"all {failed} judgments failed (see the error fields); re-run to retry"
    return None


STAGE = Stage(
    name="evaluate", config=EvaluateConfig, run=run_evaluate, plan=_plan, units=_units, line=_line, listed=True,
    failed=_failed,
    needs=("train",),
    help="Judge a model against a baseline: AlpacaEval-2 WR and LC, Arena-Hard WR with a 95% interval, and AP; "
         "or, judge-free, IFEval accuracy (--bench ifeval), or the absolute rating (--bench rating).",
    summary=lambda report: {"results": report["results"], "ledger": report.get("ledger") or []},
)
