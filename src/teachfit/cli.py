"""The `teachfit` command: a thin layer over the stages (teachfit.stages), one subcommand each.

Every stage command's flags are made from its config dataclass (teachfit.config), so a flag, a
key of the experiment file and an argument of the Python API are one declaration.
"""
from __future__ import annotations

import inspect
import json
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from teachfit import config as configs
from teachfit.records import InputError

app = typer.Typer(
    help="Choose the teacher model that writes your synthetic instruction data, for your student "
    "(Compatibility-Adjusted Reward, CAR = r / (1 + beta * L)).\n\n"
    "Models are given as hf:<hub id or dir>, gguf:<file>, packaged:<name> (see `teachfit models`), "
    "openai:<model>@<url> or vllm:<id>. `teachfit run experiment.yaml` runs a whole study from one file.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
CONFIG_FILE_HELP = "YAML file of this command's options (the keys of its experiment-file section); flags override it."


def _emit(data: object, as_json: bool, as_text: "typing.Callable[[], str]") -> None:
    """Print `data` as JSON, or the text rendering (built only when needed)."""
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else as_text())


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _parameter(f: Any, hint: Any) -> inspect.Parameter:
    """The typer parameter of one config field."""
    meta = f.metadata
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    origin = typing.get_origin(hint)
    if origin in (list, typing.List):
        annotation, default = List[typing.get_args(hint)[0]], None
    else:
        annotation = hint
    if meta.get("positional"):
        info = typer.Argument(default, help=meta.get("help"), show_default=False)
    else:
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        names = [f"{flag}/--no-{flag[2:]}"] if hint is bool else [flag]
        info = typer.Option(default, *names, help=meta.get("help"))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def config_from_flags(cls: type, values: dict[str, Any], config_file: Optional[Path], context: Any) -> Any:
    """A config from a --config YAML file (checked with line numbers) and the flags given on the
    command line (flags left at their default do not override the file)."""
    from teachfit.experiment import _Checker, key_lines

    def given_on_command_line(name: str) -> bool:
        source = context.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    given = {k: v for k, v in values.items() if v is not None and given_on_command_line(k)}
    base: dict[str, Any] = {}
    if config_file is not None:
        import yaml

        if not config_file.is_file():
            raise InputError(config_file, None, "file not found")
        text = config_file.read_text(encoding="utf-8")
        checker = _Checker(config_file, key_lines(yaml.compose(text)))
        base = {f.name: getattr(checker.section(cls, yaml.safe_load(text) or {}, ()), f.name) for f in fields(cls)}
    defaults = {k: v for k, v in values.items() if v is not None}
    try:
        return cls(**(defaults | base | given))
    except configs.ConfigValueError as error:
        flag = "--" + error.key.replace("_", "-")
        raise InputError(flag, None, error.message) from None


def stage_command(name: str, cls: type, **extras: tuple[Any, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `body(config, **extras)` as `teachfit <name>`, its flags made from `cls`'s fields
    (plus --config FILE and the display-only `extras`: name -> (annotation, typer.Option))."""
    hints = typing.get_type_hints(cls)

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        params = [inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
        params += [_parameter(f, hints[f.name]) for f in fields(cls)]
        params.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                        default=typer.Option(None, "--config", help=CONFIG_FILE_HELP)))
        params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v[1], annotation=v[0])
                   for k, v in extras.items()]

        def command(**kwargs: Any) -> Any:
            extra_values = {k: kwargs.pop(k) for k in extras}
            config_file, context = kwargs.pop("config_file"), kwargs.pop("context")
            return body(config_from_flags(cls, kwargs, config_file, context), **extra_values)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__, command.__name__ = body.__doc__, name
        app.command(name)(command)
        return body

    return decorate


EXECUTOR_OPTIONS = {
    "executor": (str, typer.Option("local", help="local | ray: shard the work over Ray workers (pip install 'teachfit[ray]').")),
    "num_workers": (int, typer.Option(2, help="Ray workers (--executor ray); each loads its model once.")),
    "num_gpus_per_worker": (float, typer.Option(0.0, help="GPUs per Ray worker (--executor ray).")),
}


def _executor(executor: str, num_workers: int, num_gpus_per_worker: float) -> Any:
    from teachfit.executors import make_executor
    from teachfit.experiment import ExecutorConfig

    return make_executor(ExecutorConfig(type=executor, num_workers=num_workers, num_gpus_per_worker=num_gpus_per_worker))


def _run_dir_of(paths: list[str]) -> Any:
    """The run directory among the positional paths, if one is a directory."""
    from teachfit.run import RunDir

    folders = [Path(p) for p in paths if Path(p).is_dir()]
    return RunDir(folders[0]) if folders else None


@stage_command("generate", configs.GenerateConfig,
               out=(Path, typer.Option(..., help="Run directory; datasets go to OUT/responses/<name>.jsonl.")),
               **EXECUTOR_OPTIONS)
def generate(config: configs.GenerateConfig, out: Path, executor: str, num_workers: int,
             num_gpus_per_worker: float) -> None:
    """Generate responses to an instruction set with one or more teachers (greedy or sampled, N samples)."""
    from teachfit.run import RunDir
    from teachfit.stages import run_generate

    if not config.teacher or not config.instructions:
        _fail("give --instructions and at least one --teacher")
    run = RunDir(out)
    stats = run_generate(config, run, _executor(executor, num_workers, num_gpus_per_worker))
    for s in stats["datasets"]:
        speed = f", {s['tokens_per_second']} tok/s" if s.get("tokens_per_second") else ""
        typer.echo(f"{s['dataset']}: {s['generated']} new, {s['already_done']} already done, "
                   f"{s['errors']} failed{speed} -> {run.responses(s['dataset'])}")
    _exit_if_nothing_succeeded(stats["generated"] + sum(s["already_done"] for s in stats["datasets"]), stats["failed"],
                               "answers")


def _exit_if_nothing_succeeded(succeeded: int, failed: int, what: str) -> None:
    if failed and not succeeded:
        typer.secho(f"error: all {failed} {what} failed (see the error fields); re-run to retry", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(3)


@stage_command("score", configs.ScoreConfig, **EXECUTOR_OPTIONS)
def score(config: configs.ScoreConfig, executor: str, num_workers: int, num_gpus_per_worker: float) -> None:
    """Score every (instruction, response) pair: student loss/PPL/IFD/RSR, reference PPL/IFD, reward, length."""
    from teachfit.stages import run_score

    if not config.inputs:
        _fail("give response files or a run directory")
    run = _run_dir_of(config.inputs)
    if executor != "local" and run is None:
        _fail("--executor ray needs a run directory (its shards leave completion markers there)")
    for student, s in run_score(config, run, _executor(executor, num_workers, num_gpus_per_worker))["students"].items():
        counts = s["counts"]
        typer.echo(f"{student}: scored {counts['scored']} pairs ({counts['truncated']} truncated, "
                   f"{counts['skipped']} skipped) in {s['seconds']:.1f}s -> {s['out']}")


@stage_command("rank", configs.RankConfig,
               as_json=(bool, typer.Option(False, "--json", help="Print JSON instead of a table.")),
               csv_out=(Optional[Path], typer.Option(None, "--csv", help="Also write the table as CSV here.")),
               json_out=(Optional[Path], typer.Option(None, "--json-out", help="Also write JSON here.")))
def rank(config: configs.RankConfig, as_json: bool, csv_out: Optional[Path], json_out: Optional[Path]) -> None:
    """Rank teachers for each student by CAR and every baseline metric, and recommend one
    (a run directory gets ranking.csv and ranking.json)."""
    from teachfit.rank import markdown_table
    from teachfit.records import write_table
    from teachfit.stages import run_rank

    if not config.scores:
        _fail("give score files or a run directory")
    rankings = run_rank(config, _run_dir_of(config.scores))
    rows = [r for k in rankings.values() for r in k.rows]
    if csv_out:
        write_table(csv_out, rows, {"stage": "rank"})
    data = {s: k.to_dict() for s, k in rankings.items()}
    data = next(iter(data.values())) if len(data) == 1 else data
    if json_out:
        json_out.write_text(json.dumps(data, indent=2))
    _emit(data, as_json, lambda: "\n\n".join(markdown_table(k) for k in rankings.values()))


@stage_command("select", configs.SelectConfig)
def select(config: configs.SelectConfig) -> None:
    """The training set: one response per instruction, from one teacher (car) or mixed per
    instruction (car-instance, grape, persyn, reward, random); best-/worst-of-N with --teacher."""
    from teachfit.stages import run_select

    if not config.inputs:
        _fail("give a run directory or score files")
    summary = run_select(config, _run_dir_of(config.inputs))
    shares = ", ".join(f"{t} {s:.0%}" for t, s in (summary.get("share") or {}).items())
    chosen = summary.get("selection") or {}
    missing = len(summary.get("missing") or [])
    typer.echo(f"selected {chosen.get('n_pairs', 0)} responses by {config.by} ({shares}); mean reward "
               f"{chosen.get('reward', float('nan')):.3f}, loss_self {chosen.get('loss_self', float('nan')):.3f}"
               f"{f'; {missing} instructions without a usable candidate' if missing else ''} -> {', '.join(summary['written'])}")


@stage_command("train", configs.TrainConfig)
def train(config: configs.TrainConfig) -> None:
    """Fine-tune (SFT) a student on a teacher's dataset with the paper's recipe; resumes when re-run.

    Multi-GPU: `accelerate launch -m teachfit.cli train ...` or `torchrun --nproc-per-node N -m teachfit.cli train ...`
    (the gradient accumulation is recomputed so the effective batch stays the same)."""
    from teachfit.stages import run_train

    if not config.data:
        _fail("give a run directory or response files")
    summary = run_train(config, None)
    typer.echo(f"trained {summary['global_step']} steps on {summary['counts']['pairs']} pairs in {summary['seconds']}s, "
               f"train loss {summary['train_loss']:.4f} -> {config.out}")


@stage_command("evaluate", configs.EvaluateConfig)
def evaluate(config: configs.EvaluateConfig) -> None:
    """Judge a model against a baseline: AlpacaEval-2 WR and LC, Arena-Hard WR with a 95% interval, and AP;
    or, judge-free, IFEval accuracy (--bench ifeval), or the absolute rating (--bench rating)."""
    from teachfit.stages import run_evaluate

    if not config.out:
        _fail("give --out (a run directory or an output folder)")
    report = run_evaluate(config, None)
    r = report["results"]
    if r["bench"] in ("ifeval", "rating"):
        from teachfit.truth import summary_line

        typer.echo(f"{summary_line(r)} ({r['seconds']}s) -> {Path(config.out) / 'results.csv'}")
        return

    def fmt(key: str) -> str:
        return f"{r[key]:.2f}" if isinstance(r.get(key), float) else "-"

    typer.echo(f"AE2 WR {fmt('ae2_wr')} (se {fmt('ae2_wr_se')})  LC {fmt('ae2_lc')} [{r.get('lc_formula', '-')}]  "
               f"AH WR {fmt('ah_wr')} [{fmt('ah_ci_low')}, {fmt('ah_ci_high')}]  AP {fmt('ap')}  "
               f"(unparsable: {r.get('unparsable_ae2', 0)} AE2, {r.get('unparsable_ah', 0)} AH; "
               f"{r['seconds']}s) -> {Path(config.out) / 'results.csv'}")
    _exit_if_nothing_succeeded(r.get("n_ae2", 0) + r.get("n_ah", 0),
                               r.get("unparsable_ae2", 0) + r.get("unparsable_ah", 0), "judgments")


@stage_command("correlate", configs.CorrelateConfig,
               as_json=(bool, typer.Option(False, "--json", help="Print JSON.")))
def correlate(config: configs.CorrelateConfig, as_json: bool) -> None:
    """Spearman rho of each metric's teacher ranking against the measured AP ranking (paper Table 4)."""
    from teachfit.correlate import correlation_text
    from teachfit.stages import run_correlate

    try:
        report = run_correlate(config, None)
    except ValueError as error:
        _fail(str(error))
    _emit(report, as_json, lambda: correlation_text(report))


@stage_command("report", configs.ReportConfig)
def report(config: configs.ReportConfig) -> None:
    """One self-contained HTML page with the ranking, CAR vs AP, rho per metric and AP bars (PNGs beside it)."""
    from teachfit.stages import run_report

    try:
        result = run_report(config, None)
    except FileNotFoundError as error:
        _fail(str(error))
    typer.echo(f"wrote {result['html']} with {len(result['images'])} plots ({', '.join(result['images'])})")


@app.command()
def run(
    experiment: Path = typer.Argument(..., help="The experiment file (YAML): one section per stage."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (done, to run, how much work) and stop."),
    only: List[str] = typer.Option(None, "--only", help="Run only these stages (repeatable)."),
    executor: Optional[str] = typer.Option(None, help="local | ray (overrides the file's executor)."),
    run_dir: Optional[Path] = typer.Option(None, help="Run directory (overrides the file's run_dir)."),
) -> None:
    """Run a whole study from one experiment file; a re-run does only what is missing or changed."""
    from teachfit.pipeline import plan_text, run_experiment

    result = run_experiment(experiment, run_dir=run_dir, only=only or None, executor=executor, dry_run=dry_run)
    if dry_run:
        typer.echo(plan_text(result))


@app.command()
def demo(
    live: bool = typer.Option(False, "--live", help="Generate the teachers' responses live (llama.cpp) and use the "
                              "1.5B judge; about 17 minutes here instead of about 5."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the demo's experiment file and stop."),
    run_dir: Path = typer.Option(Path("runs/demo"), help="Run directory (re-running reuses what is there)."),
) -> None:
    """The main job on the embedded default, offline: the packaged Gemma-3-270M base student scores
    the packaged teachers' responses to the shipped instructions, with a packaged judge's reward."""
    from teachfit.demo import demo_experiment, run_demo

    if print_config:
        typer.echo(demo_experiment(live).read_text(encoding="utf-8"))
        return
    run_demo(live=live, run_dir=run_dir)


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
    except (InputError, ModelSpecError, PackagedModelError, ValueError) as error:
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
