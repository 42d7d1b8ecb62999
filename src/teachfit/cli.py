"""The `teachfit` command: a thin layer over the Python API, one subcommand per stage."""
from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import List, Optional

import typer

from teachfit.records import InputError

app = typer.Typer(
    help="Choose the teacher model that writes your synthetic instruction data, for your student "
    "(Compatibility-Adjusted Reward, CAR = r / (1 + beta * L)).\n\n"
    "Models are given as hf:<hub id or dir>, gguf:<file> or packaged:<name> (see `teachfit models`).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def _emit(data: object, as_json: bool, as_text: "typing.Callable[[], str]") -> None:
    """Print `data` as JSON, or the text rendering (built only when needed)."""
    typer.echo(json.dumps(data, indent=2) if as_json else as_text())


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def score(
    inputs: List[Path] = typer.Argument(None, help="Response files (.jsonl/.json/.parquet) or run directories."),
    data: List[Path] = typer.Option(None, "--data", help="More response files; may be repeated."),
    student: str = typer.Option(..., help="The student (base model) whose loss measures compatibility."),
    reference: Optional[str] = typer.Option(None, help="Reference LM for the -Ref metrics (GPT-2 in the paper)."),
    reward_model: Optional[str] = typer.Option(None, help="Reward model: a sequence classifier or an instruct judge."),
    reward_kind: str = typer.Option("auto", help="auto | classifier | judge (probability-weighted 1-9 rating)."),
    out: Optional[Path] = typer.Option(None, help="Output .parquet (default: RUN/scores/scores.parquet or scores.parquet)."),
    max_length: int = typer.Option(4096, help="Tokens per rendered pair; longer responses are truncated and counted."),
    token_budget: int = typer.Option(16384, help="Tokens per batch (batch size x padded length)."),
    max_batch_size: int = typer.Option(64, help="Most sequences in one batch."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (auto: bf16 where the hardware has it)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where per-pair results are cached (default: beside --out)."),
    skip_invalid: bool = typer.Option(False, help="Skip and count bad rows instead of stopping at the first."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub (off unless you ask)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Score every (instruction, response) pair: student loss/PPL/IFD, reference PPL/IFD, reward, length."""
    from teachfit.score import ScoreOptions, score_files

    sources = list(inputs or []) + list(data or [])
    if not sources:
        _fail("give response files or a run directory (positional or --data)")
    if out is None:
        run_dirs = [s for s in sources if s.is_dir()]
        out = (run_dirs[0] / "scores" / "scores.parquet") if run_dirs else Path("scores.parquet")
    options = ScoreOptions(max_length=max_length, token_budget=token_budget, max_batch_size=max_batch_size,
                           dtype=dtype, device=device, skip_invalid=skip_invalid, trust_remote_code=trust_remote_code)
    meta = score_files(sources, out, student, reference, reward_model, reward_kind, options, cache_dir,
                       show_progress=progress)
    counts = meta["counts"]
    typer.echo(f"scored {counts['scored']} pairs ({counts['truncated']} truncated, {counts['skipped']} skipped) "
               f"in {meta['seconds']:.1f}s -> {out}")


@app.command()
def rank(
    scores: List[Path] = typer.Argument(..., help="Score files written by `teachfit score` (or run directories)."),
    beta: float = typer.Option(3.0, help="Weight of compatibility in CAR = r / (1 + beta * L)."),
    reward_transform: str = typer.Option("raw", help="raw | shift (min reward -> 0) | sigmoid; for negative rewards."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for CAR's interval (0 to skip)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV here."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write JSON here."),
) -> None:
    """Rank teachers for the student by CAR and every baseline metric, and recommend one."""
    from teachfit.rank import markdown_table, rank_teachers, student_of
    from teachfit.records import read_table, write_table

    rows, metas, students = [], [], set()
    for path in scores:
        path = path / "scores" / "scores.parquet" if path.is_dir() else path
        file_rows, meta = read_table(path)
        rows.extend(file_rows)
        metas.append({"path": str(path), "scorers": meta.get("scorers")})
        students.add(student_of(meta))
    if len(students) > 1:
        _fail(f"these score files were made with different students ({', '.join(map(str, students))}): rank each alone")
    try:
        ranking = rank_teachers(rows, beta=beta, reward_transform=reward_transform, n_bootstrap=bootstrap, seed=seed,
                                student=students.pop())
    except ValueError as error:
        _fail(str(error))
    ranking.settings["scores"] = metas
    if csv_out:
        write_table(csv_out, ranking.rows, ranking.settings)
    if json_out:
        json_out.write_text(json.dumps(ranking.to_dict(), indent=2))
    _emit(ranking.to_dict(), as_json, lambda: markdown_table(ranking))


@app.command()
def generate(
    instructions: List[Path] = typer.Option(..., help="Instruction files (.jsonl/.json/.parquet); may be repeated."),
    teacher: List[str] = typer.Option(..., help="Teacher spec, repeatable; per-teacher settings as "
                                      "SPEC?temperature=0.8&top_p=0.95&n=5&select=best&name=NAME."),
    out: Path = typer.Option(..., help="Run directory; datasets go to OUT/responses/<name>.jsonl."),
    temperature: float = typer.Option(0.0, help="Default temperature (0 = greedy, the paper's default)."),
    top_p: float = typer.Option(1.0, help="Default nucleus sampling top-p."),
    max_new_tokens: int = typer.Option(1024, help="Most tokens per response."),
    seed: int = typer.Option(0, help="Base seed; each (instruction, sample) gets its own seed from it."),
    n: int = typer.Option(1, help="Samples per instruction."),
    select: Optional[str] = typer.Option(None, help="best | worst: keep the highest/lowest-reward of n samples."),
    reward_model: Optional[str] = typer.Option(None, help="Reward model for --select (classifier or judge)."),
    reward_kind: str = typer.Option("auto", help="auto | classifier | judge."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N instructions."),
    concurrency: int = typer.Option(8, help="Requests in flight for openai: teachers."),
    n_ctx: int = typer.Option(4096, help="Context size for GGUF teachers (llama.cpp)."),
    dtype: str = typer.Option("auto", help="dtype for hf: teachers and the reward model."),
    device: str = typer.Option("auto", help="Device for hf: teachers and the reward model."),
    skip_invalid: bool = typer.Option(False, help="Skip and report bad instructions instead of stopping."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub (off unless you ask)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Generate responses to an instruction set with one or more teachers (greedy, sampling, best/worst-of-N)."""
    from teachfit.generate import generate as run_generate
    from teachfit.generate import parse_teacher
    from teachfit.instructions import read_instructions
    from teachfit.models.base import GenerationSettings

    skipped: list = []
    items = read_instructions(instructions, skip_invalid=skip_invalid, skipped=skipped)[:limit]
    for row in skipped:
        typer.secho(f"skipped {row['path']}:{row['line']}: {row['reason']}", fg=typer.colors.YELLOW, err=True)
    defaults = GenerationSettings(temperature, top_p, max_new_tokens, seed, n, select)
    try:
        requests = [parse_teacher(t, defaults) for t in teacher]
    except ValueError as error:
        _fail(str(error))
    reward_loader = None
    if reward_model:
        from teachfit.reward import load_reward
        from teachfit.forward import BatchPlan

        def reward_loader():
            return load_reward(reward_model, reward_kind, BatchPlan(), 4096, dtype=dtype, device=device,
                               trust_remote_code=trust_remote_code)

    options = {"concurrency": concurrency, "n_ctx": n_ctx, "dtype": dtype, "device": device,
               "trust_remote_code": trust_remote_code}
    summaries = run_generate(items, requests, out, options, reward_loader, show_progress=progress)
    for s in summaries:
        speed = f", {s['tokens_per_second']} tok/s" if s.get("tokens_per_second") else ""
        typer.echo(f"{s['dataset']}: {s['generated']} new, {s['already_done']} already done, "
                   f"{s['errors']} errors{speed} -> {out / 'responses' / (s['dataset'] + '.jsonl')}")


@app.command()
def train(
    data: List[Path] = typer.Argument(..., help="Run directory or response files."),
    student: str = typer.Option(..., help="Base model to fine-tune (hf:, gguf:, packaged: are all trainable)."),
    out: Path = typer.Option(..., help="Checkpoint directory (model, tokenizer with chat template, logs)."),
    teacher: Optional[str] = typer.Option(None, help="Train on this teacher's dataset only (its name in the run)."),
    config: Optional[Path] = typer.Option(None, help="YAML file of training settings; flags override it."),
    learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate [paper: 2e-5]."),
    epochs: Optional[float] = typer.Option(None, help="Epochs [paper: 2]."),
    warmup_steps: Optional[int] = typer.Option(None, help="Warmup steps [paper: 100]."),
    effective_batch_size: Optional[int] = typer.Option(None, help="Per-device batch x accumulation x devices [paper: 32]."),
    per_device_batch_size: Optional[int] = typer.Option(None, help="Sequences per device per step [paper: 1]."),
    max_length: Optional[int] = typer.Option(None, help="Max sequence length [paper: 4096]."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps (-1: epochs decide)."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help="LoRA adapters (merged on save) or full fine-tuning."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, help="Trade compute for memory."),
    save_steps: Optional[int] = typer.Option(None, help="Checkpoint every N steps (resume point)."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Fine-tune (SFT) a student on a teacher's dataset with the paper's recipe; resumes when re-run.

    Multi-GPU: `accelerate launch -m teachfit.cli train ...` or `torchrun --nproc-per-node N -m teachfit.cli train ...`
    (the gradient accumulation is recomputed so the effective batch stays the same)."""
    from teachfit.train import TrainConfig, train_student

    overrides = {"learning_rate": learning_rate, "num_train_epochs": epochs, "warmup_steps": warmup_steps,
                 "effective_batch_size": effective_batch_size, "per_device_batch_size": per_device_batch_size,
                 "max_length": max_length, "max_steps": max_steps, "lora": lora,
                 "gradient_checkpointing": gradient_checkpointing, "save_steps": save_steps}
    try:
        settings = TrainConfig.from_yaml(config, **overrides) if config else \
            TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
        summary = train_student(data, student, out, settings, teacher, show_progress=progress)
    except ValueError as error:
        _fail(str(error))
    typer.echo(f"trained {summary['global_step']} steps on {summary['counts']['pairs']} pairs in {summary['seconds']}s, "
               f"train loss {summary['train_loss']:.4f} -> {out}")


@app.command()
def evaluate(
    model: str = typer.Option(..., help="The model to evaluate: a checkpoint (hf:DIR) or any teacher spec."),
    judge: str = typer.Option(..., help="Judge: openai:<model>@<url> (GPT-4-class or a local server) or gguf:/packaged:."),
    out: Path = typer.Option(..., help="Output folder: answers/, judgments/, results.csv, scores-*.json."),
    bench: str = typer.Option("offline", help="offline (shipped, 40 prompts) | alpaca_eval | arena_hard | FILE."),
    baseline: Optional[str] = typer.Option(None, help="Baseline answers FILE, or a MODEL spec to generate them "
                                           "(default: the bench's own outputs)."),
    style: str = typer.Option("both", help="ae2 | ah | both (both gives AP)."),
    max_new_tokens: int = typer.Option(512, help="Most tokens per answer (greedy decoding)."),
    constraint: str = typer.Option("grammar", help="Constrain judge output: grammar (llama.cpp) | guided_choice (vLLM) | none."),
    concurrency: int = typer.Option(4, help="Judge requests in flight (openai: judges)."),
    student_name: Optional[str] = typer.Option(None, help="Label for results.csv (default: from the checkpoint)."),
    teacher_name: Optional[str] = typer.Option(None, help="Label for results.csv (default: from the checkpoint)."),
    seed: int = typer.Option(0, help="Seed of the AE2 position shuffle."),
    dtype: str = typer.Option("auto", help="dtype for hf: models."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Judge a model against a baseline: AlpacaEval-2 WR and LC, Arena-Hard WR with a 95% interval, and AP."""
    from teachfit.evaluate import labels_for, run_evaluation

    if style not in ("ae2", "ah", "both"):
        _fail("--style must be ae2, ah or both")
    labels = labels_for(model)
    labels.update({k: v for k, v in (("student", student_name), ("teacher", teacher_name)) if v})
    report = run_evaluation(model, out, judge, bench, baseline, style, max_new_tokens, constraint, concurrency, seed,
                            labels, {"dtype": dtype, "n_ctx": 4096}, progress)
    r = report["results"]

    def fmt(key: str) -> str:
        return f"{r[key]:.2f}" if isinstance(r.get(key), float) else "-"

    typer.echo(f"AE2 WR {fmt('ae2_wr')} (se {fmt('ae2_wr_se')})  LC {fmt('ae2_lc')} [{r.get('lc_formula', '-')}]  "
               f"AH WR {fmt('ah_wr')} [{fmt('ah_ci_low')}, {fmt('ah_ci_high')}]  AP {fmt('ap')}  "
               f"(unparsable: {r.get('unparsable_ae2', 0)} AE2, {r.get('unparsable_ah', 0)} AH; "
               f"{r['seconds']}s) -> {out / 'results.csv'}")


@app.command()
def paper(
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    csv_dir: Optional[Path] = typer.Option(None, "--csv", help="Also write each table as CSV into this folder."),
) -> None:
    """The paper's own tables from its published numbers: AP per cell (Figure 2), the Larger
    Models' Paradox (Finding 1), the same-family effect (Finding 2), size vs AP, Table 4 arithmetic."""
    from teachfit import paper as published
    from teachfit.records import write_table

    sections = {
        "ap_grid": published.ap_grid(), "paradox_pairs": published.paradox_pairs(),
        "paradox_summary": published.paradox_summary(), "family_effect": published.family_effect(),
        "own_family_advantage": published.own_family_advantage(),
        "size_vs_ap": [{"student": s, "rho": r} for s, r in published.size_vs_ap().items()],
        "table4_arithmetic": published.table4_arithmetic(), "reported_ap_checks": published.reported_ap_checks(),
    }
    if csv_dir:
        for name, rows in sections.items():
            write_table(csv_dir / f"{name}.csv", rows, {"source": "teachfit paper"})
    from teachfit.paper.text import render

    _emit(sections, as_json, lambda: render(sections))


@app.command()
def correlate(
    run_dir: Optional[Path] = typer.Argument(None, help="Run directory with ranking.csv (and rankings/*.csv) and results.csv."),
    metrics_files: List[Path] = typer.Option(None, "--metrics", help="Ranking CSV/JSON files from `teachfit rank`."),
    truth: Optional[Path] = typer.Option(None, help="Measured results CSV: student, teacher, ap (or ae2_lc and ah_wr)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples over teachers for rho's interval."),
    fit_beta_flag: bool = typer.Option(False, "--fit-beta", help="Choose beta by leave-one-teacher-out."),
    out: Optional[Path] = typer.Option(None, help="Write correlation.csv here (default: RUN/correlation.csv)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Spearman rho of each metric's teacher ranking against the measured AP ranking (paper Table 4)."""
    from teachfit.correlate import beta_sweep, correlation_table, correlation_text, fit_beta, join, read_rankings, read_truth
    from teachfit.records import write_table

    files = list(metrics_files or [])
    if run_dir is not None:
        files += sorted(run_dir.glob("ranking.csv")) + sorted(run_dir.glob("rankings/*.csv"))
        truth = truth or run_dir / "results.csv"
        out = out or run_dir / "correlation.csv"
    if not files or truth is None:
        _fail("give a run directory, or --metrics files and --truth")
    joined = join(read_rankings(files), read_truth(truth))
    if not joined:
        _fail(f"no (student, teacher) appears in both {', '.join(map(str, files))} and {truth}")
    table = correlation_table(joined, bootstrap)
    report = {"correlation": table, "beta_sweep": beta_sweep(joined)}
    if fit_beta_flag:
        report["fit_beta"] = fit_beta(joined)
    if out:
        write_table(out, table, {"metrics": [str(f) for f in files], "truth": str(truth)})
    _emit(report, as_json, lambda: correlation_text(report))


@app.command()
def report(
    run_dir: Optional[Path] = typer.Argument(None, help="Run directory (ranking.csv, results.csv)."),
    include_paper: bool = typer.Option(False, "--paper", help="Add the paper's Figure 2 and Table 4."),
    out: Optional[Path] = typer.Option(None, help="HTML file (default: RUN/report.html, or report.html)."),
) -> None:
    """One self-contained HTML page with the ranking, CAR vs AP, rho per metric and AP bars (PNGs beside it)."""
    from teachfit.report import build_report

    out = out or ((run_dir / "report.html") if run_dir else Path("report.html"))
    try:
        result = build_report(run_dir, out, include_paper)
    except FileNotFoundError as error:
        _fail(str(error))
    typer.echo(f"wrote {result['html']} with {len(result['images'])} plots ({', '.join(result['images'])})")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory (re-running reuses what is there)."),
    per_category: int = typer.Option(2, help="Instructions per category (12 categories in the shipped set)."),
    max_new_tokens: int = typer.Option(256, help="Most tokens per teacher response."),
    stored: bool = typer.Option(False, help="Score the shipped responses instead of generating them live."),
    beta: float = typer.Option(3.0, help="CAR's beta."),
) -> None:
    """The main job on the embedded default, offline: packaged teachers answer the shipped
    instructions, the packaged Gemma-3-270M base is the student, a packaged judge gives rewards."""
    from teachfit.demo import run_demo

    run_demo(out, per_category, max_new_tokens, beta, stored=stored)


@app.command()
def models(fetch: List[str] = typer.Option(None, help="Assemble and checksum these packaged models now.")) -> None:
    """List the packaged offline models (packaged:<name>) and whether they are installed."""
    from teachfit.models.packaged import PACKAGED, PackagedModelError, chunk_paths, resolve_packaged

    for name, model in PACKAGED.items():
        try:
            chunk_paths(model)
            state = "installed"
        except PackagedModelError:
            state = f"not installed ({model.install_hint()})"
        typer.echo(f"packaged:{name:<30} {model.description} [{state}]")
    for name in fetch or []:
        typer.echo(f"{name}: {resolve_packaged(name)}")


def main() -> None:
    """Entry point: run the app, turning bad input into a one-line error and exit code 2."""
    from teachfit.models import ModelSpecError
    from teachfit.models.packaged import PackagedModelError

    try:
        app()
    except (InputError, ModelSpecError, PackagedModelError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except ImportError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(3)
    except OSError as error:  # e.g. a hub id that cannot be fetched offline, a full disk
        typer.secho(f"error: {type(error).__name__}: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
