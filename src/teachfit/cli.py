"""The `teachfit` command: a thin layer over the stages (teachfit.stages), one subcommand each.

Every stage command's flags are made from its config dataclass (teachfit.config), so a flag, a
key of the experiment file and an argument of the Python API are one declaration.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer

from teachfit import config as configs
from teachfit.records import InputError
from teachfit.stages import STAGES

app = typer.Typer(
    help="Choose the teacher model that writes your synthetic instruction data, for your student "
    "(Compatibility-Adjusted Reward, CAR = r / (1 + beta * L)).\n\n"
    "Models are given as hf:<hub id or dir>, gguf:<file>, packaged:<name> (see `teachfit models`), "
    "openai:<model>@<url> or vllm:<id>. `teachfit run experiment.yaml` runs a whole study from one file.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: `[paper: 2e-5]` and `'teachfit[ray]'` are shown as written
)
def _version(value: bool) -> None:
    if value:
        from teachfit.versions import versions

        typer.echo(f"teachfit {versions().get('teachfit', 'unknown')}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print teachfit's version and stop."),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; a study prints only the units "
                                                                     "it runs and their results."),
             verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show the warnings of the libraries "
                                                                         "teachfit uses (hidden by default).")) -> None:
    """Choose the teacher model that writes your synthetic instruction data, for your student."""
    if quiet:
        QUIET.append(True)
    if not verbose:  # what the libraries say about themselves, not about the user's data
        import warnings

        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # e.g. "Some weights ... lm_head ... not used"
        os.environ.setdefault("DATASETS_VERBOSITY", "critical")  # its "Failed to load JSON": teachfit's error says it


QUIET: list[bool] = []  # set by -q for this process


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
    text = meta.get("help", "") + (" Required (on the command line or in --config)." if meta.get("required") else "")
    if meta.get("positional"):
        info = typer.Argument(default, help=text, show_default=False)
    else:
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        names = [f"{flag}/--no-{flag[2:]}"] if hint is bool else [flag]
        info = typer.Option(default, *names, help=text)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def config_from_flags(cls: type, values: dict[str, Any], config_file: Optional[Path], context: Any) -> Any:
    """A config from a --config YAML file (checked with line numbers) and the flags given on the
    command line (flags left at their default do not override the file)."""
    from teachfit.experiment import config_from_file

    def given_on_command_line(name: str) -> bool:
        source = context.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    given = {k: v for k, v in values.items() if v is not None and given_on_command_line(k)}
    from_file = config_from_file(cls, config_file) if config_file is not None else {}
    defaults = {k: v for k, v in values.items() if v is not None}
    try:
        return cls(**(defaults | from_file | given))
    except configs.ConfigValueError as error:
        flag = "--" + error.key.replace("_", "-")
        raise InputError(flag, None, error.message) from None


def stage_command(stage: Any) -> None:
    """Register `teachfit <stage>`: its flags made from the stage's config fields (plus --config
    FILE, --json, and the executor's flags for a sharded stage); it runs the stage and prints what
    the Stage record says (exit 3 when every item failed)."""
    hints = typing.get_type_hints(stage.config)
    extras = [(configs.ExecutorConfig, f) for f in fields(configs.ExecutorConfig)] if stage.sharded else []
    params = [inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    own = stage.config.__dict__.get("__annotations__", {})  # the command's own options first, shared ones after
    params += [_parameter(f, hints[f.name]) for f in sorted(fields(stage.config), key=lambda f: f.name not in own)]
    params += [_parameter(f, typing.get_type_hints(cls)[f.name]) for cls, f in extras]
    params.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                    default=typer.Option(None, "--config", help=CONFIG_FILE_HELP)))
    params.append(inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, "--json", help="Print the result as JSON.")))

    def command(**kwargs: Any) -> None:
        executor_values = {f.name: kwargs.pop(f.name) for _, f in extras}
        config_file, context, as_json = kwargs.pop("config_file"), kwargs.pop("context"), kwargs.pop("as_json")
        config = config_from_flags(stage.config, kwargs, config_file, context)
        if QUIET and hasattr(config, "progress"):
            config.progress = False
        executor = None
        if stage.sharded:
            from teachfit.executors import make_executor

            executor = make_executor(config_from_flags(configs.ExecutorConfig, executor_values, None, context))
        run = stage.run_dir_of(config) if stage.run_dir_of else None
        with _interruptible():
            stats = stage.run(config, run, executor)
        _emit(_plain(stats), as_json, lambda: (stage.text or stage.line)(stats))
        failure = stage.failed(stats)
        if failure:
            typer.secho(f"error: {failure}", fg=typer.colors.RED, err=True)
            raise typer.Exit(3)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__, command.__name__ = stage.help, stage.name
    app.command(stage.name)(command)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C: one line saying what was kept (a study names the unit and how to resume), exit 130.
    (typer turns a KeyboardInterrupt into a silent exit 130, so the line is printed here.)"""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        message = str(interrupt) or "interrupted: what was finished is saved; run the same command again to resume"
        typer.secho(message, fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


def _plain(stats: Any) -> Any:
    """Stats as JSON-able data (a ranking becomes its dict; one student's rankings are unwrapped)."""
    if isinstance(stats, dict) and stats and all(hasattr(v, "to_dict") for v in stats.values()):
        data = {k: v.to_dict() for k, v in stats.items()}
        return next(iter(data.values())) if len(data) == 1 else data
    return stats


for _stage in STAGES:
    stage_command(_stage)


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

    show = (lambda line: typer.echo(line) if "done (unchanged)" not in line else None) if QUIET else typer.echo
    with _interruptible():
        result = run_experiment(experiment, run_dir=run_dir, only=only or None, executor=executor, dry_run=dry_run,
                                show=show, progress=not QUIET)
    if dry_run:
        typer.echo(plan_text(result))


@app.command()
def demo(
    live: bool = typer.Option(False, "--live", help="Also generate the four teachers' responses live (llama.cpp) and "
                              "judge them with the packaged 0.5B teacher, adding a reference model for the -Ref "
                              "columns: about half an hour on 2 CPU cores (`make demo-live` installs llama.cpp, a "
                              "6-8 minute build the first time, and the teachers)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the demo's experiment file and stop."),
    run_dir: Optional[Path] = typer.Option(None, help="Run directory (default: runs/demo, or runs/demo-live with "
                                                      "--live; re-running reuses what is there)."),
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
    from teachfit.files import write_table

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


@app.command("export-model")
def export_model(
    spec: str = typer.Argument(..., help="The model: packaged:<name>, gguf:<file>, or hf:<hub id or folder>."),
    out: Path = typer.Argument(..., help="The folder to write (refused if it exists and is not empty, unless --force)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16: the dtype of the weights written."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and is not empty."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run the model's own code from the hub (auto_map in its config)."),
) -> None:
    """Write a model as a plain transformers folder (config.json, safetensors, tokenizer with the chat
    template teachfit scores with, README.md), so TRL or Axolotl can train it: a packaged or GGUF
    model is dequantized, a model without a chat template gets teachfit's default one."""
    from teachfit.export import export_model as export

    with _interruptible():
        result = export(spec, out, dtype=dtype, force=force, trust_remote_code=trust_remote_code)
    template = "its own chat template" if result["template"] == "model" else f"teachfit's template {result['template']}"
    typer.echo(f"{result['out']}: {result['spec']} as {', '.join(result['weights'])} ({result['dtype']}, "
               f"{result['bytes'] / 1e6:.0f} MB in all), with {template}")


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
