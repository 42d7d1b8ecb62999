"""The dataset card of a selection: a README.md with Hugging Face dataset-card metadata (YAML up
front) that says what the data is and how it was chosen, and the upload to the Hub.

Where the card goes (`beside`):
  --out FOLDER (datasets save_to_disk)   FOLDER/README.md
  --out DIR/NAME.jsonl|.parquet          DIR/README.md, or DIR/NAME.README.md when DIR already
                                         has a README.md that teachfit did not write (never overwritten)
  RUN/selections/NAME.jsonl              RUN/selections/NAME.README.md (one folder, many selections)
The chat template written beside a conversational format follows the same rule (chat_template.jinja).

The card gives the method and its settings (beta, alpha, reward transform, seed), the student and
its chat template, the reward source, each teacher's share with the mean reward, loss_self and
length of the selection and of every teacher, the number of pairs, the teachfit version, the command
(and the study file of a run directory), and how to train on the format with TRL.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MARK = "<!-- dataset card written by teachfit select -->"

METHODS = {
    "car": "all pairs of the one teacher with the highest CAR (compatibility-adjusted reward, "
           "T(mean reward) / (1 + beta * mean loss_self)) for this student",
    "car-instance": "per instruction, the response with the highest T(reward) / (1 + beta * loss_self)",
    "grape": "per instruction, the response the student finds most likely (the lowest loss_self; GRAPE)",
    "persyn": "per instruction, the highest (1 - alpha) * reward + alpha * (-loss_self), each min-max normalised "
              "over the instruction's candidates (PerSyn)",
    "reward": "per instruction, the response with the highest reward (best-of-N)",
    "random": "per instruction, a uniformly random response (the baseline)",
}
SETTINGS = {"car": ("beta", "reward_transform"), "car-instance": ("beta", "reward_transform"), "grape": (),
            "persyn": ("alpha",), "reward": (), "random": ("seed",)}
FORMATS = {
    "messages": "`messages`: a [user, assistant] conversation per row. TRL's `SFTTrainer` trains on every token by "
                "default; with `assistant_only_loss=True` on the assistant's turn only, the tokens teachfit scored.",
    "prompt-completion": "`prompt` / `completion`: TRL's conversational prompt-completion layout ([user] / "
                         "[assistant]). `SFTTrainer` trains on the completion only (`completion_only_loss` is on for "
                         "this layout by default): the tokens whose loss teachfit measured (loss_self).",
    "text": "`text`: each pair rendered with the student's chat template, exactly the tokens teachfit scored (the "
            "response ends at its end-of-turn token). `SFTTrainer` trains on every token of it, the prompt "
            "included (plain language modelling).",
    "alpaca": "`instruction` / `input` / `output` (Alpaca).",
    "sharegpt": "`conversations`: [human, gpt] turns (ShareGPT); TRL converts them to messages.",
}


@dataclass
class CardContext:
    """What a card says beyond the selection's summary: the selection's name, its config, the scores
    file's metadata, the student's chat template (name, or why it is unknown), the run directory."""

    name: str
    config: Any
    metadata: dict[str, Any]
    scores: str = ""
    template: str | None = None
    template_note: str = ""
    run_root: Path | None = None


def select_command(config: Any) -> str:
    """The `teachfit select` command line that gives this configuration (defaults left out)."""
    from teachfit.config import command_line

    return command_line("select", config)


def beside(out: str | Path, filename: str, stem_names: bool = False,
           ours: Callable[[str], bool] | None = None) -> Path:
    """Where a file that goes with the selection at `out` is written (see the module doc): inside a
    folder output; <stem>.<filename> with `stem_names`; else <filename> in out's folder unless a
    file of that name is there and `ours(its text)` is false (not written by teachfit: kept)."""
    out = Path(out)
    if out.suffix == "":
        return out / filename
    stemmed = out.parent / f"{out.stem}.{filename}"
    if stem_names:
        return stemmed
    plain = out.parent / filename
    if plain.exists():
        try:
            text = plain.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return stemmed
        if ours is None or not ours(text):
            return stemmed
    return plain


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


def student_of(metadata: dict[str, Any]) -> str | None:
    for scorer in metadata.get("scorers") or []:
        if isinstance(scorer, dict) and scorer.get("role") == "self":
            return (scorer.get("model") or {}).get("spec")
    return None


def reward_source(metadata: dict[str, Any]) -> str:
    """The reward in words: the model (and how it was read) or the input files' column."""
    options = metadata.get("options") or {}
    if options.get("reward_model"):
        kind = options.get("reward_kind")
        return f"`{options['reward_model']}`" + (f" ({kind})" if kind and kind != "auto" else "")
    if options.get("reward_column"):
        return f"the input files' `{options['reward_column']}` field"
    return "not recorded in the scores file"


def _experiment(run_root: Path | None) -> str | None:
    if run_root is None:
        return None
    try:
        return json.loads((Path(run_root) / "manifest.json").read_text(encoding="utf-8"))["config"]["experiment"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_card(context: CardContext, summary: dict[str, Any], data_files: str,
               template_file: str | None = None) -> str:
    """The card's text: YAML metadata (what the Hub reads: the data file as the train split), then
    what the data is, how it was chosen, and how to train on it. `data_files` and `template_file`
    are the names as seen from the card (beside it, or in the Hub repository)."""
    from teachfit.versions import versions

    config, meta = context.config, context.metadata
    method = summary.get("method") or config.by
    n_pairs = int((summary.get("selection") or {}).get("n_pairs") or summary.get("n_selected") or 0)
    settings = summary.get("settings") or {}
    fmt = summary.get("format") or "messages"
    student = student_of(meta)
    found = versions()
    yaml = [
        "---",
        f"pretty_name: {json.dumps(f'teachfit selection {context.name}')}",
        "task_categories:", "- text-generation",
        "tags:", "- teachfit", "- sft", "- synthetic", "- distillation", f"- {json.dumps(method)}",
        "size_categories:", f"- {json.dumps(_size_category(n_pairs))}",
        "configs:", "- config_name: default", "  data_files:", "  - split: train", f"    path: {json.dumps(data_files)}",
        "---",
    ]
    worst = bool(settings.get("worst"))
    how = METHODS.get(method, method)
    if worst:
        how += " — worst instead of best: the lowest score is taken"
    shown = ", ".join(f"{k} = {settings[k]}" for k in SETTINGS.get(method, ()) if k in settings)
    lines = [MARK, "", f"# {context.name}", "",
             f"A supervised fine-tuning set of {n_pairs} instruction-response pairs, one response per instruction, "
             f"chosen by [teachfit](https://pypi.org/project/teachfit/) `select` among the responses of "
             f"{len(summary.get('share') or {})} teacher(s) for the student `{student or 'not recorded'}`.", "",
             "## How it was chosen", "",
             f"- Method: `{method}`" + (f" ({shown})" if shown else "") + f": {how}.",
             f"- Student: `{student or 'not recorded'}`; its loss on each response (`loss_self`, mean negative "
             "log-likelihood per response token, the response rendered with the student's chat template) is "
             f"the compatibility term. Chat template: `{context.template or 'unknown'}`"
             + (f" ({context.template_note})" if context.template_note else "") + ".",
             f"- Reward source: {reward_source(meta)}.",
             ]
    if config.teacher:
        lines.append(f"- Only the responses of `{config.teacher}` were candidates (best-/worst-of-N of one teacher).")
    if summary.get("car_teacher"):
        lines.append(f"- The chosen teacher: `{summary['car_teacher']}` (CAR {_number(summary.get('car'), 4)}).")
    lines += ["", "## What it holds", "",
              "| | share of the selection | pairs scored | mean reward | mean loss_self | mean length |",
              "|---|---:|---:|---:|---:|---:|"]
    chosen = summary.get("selection") or {}
    lines.append(f"| **selection** | 100% | {n_pairs} | {_number(chosen.get('reward'))} | "
                 f"{_number(chosen.get('loss_self'))} | {_number(chosen.get('length'), 1)} |")
    for teacher, means in (summary.get("teachers") or {}).items():
        share = (summary.get("share") or {}).get(teacher, 0.0)
        lines.append(f"| {teacher} | {share:.1%} | {means.get('n_pairs', 0)} | {_number(means.get('reward'))} | "
                     f"{_number(means.get('loss_self'))} | {_number(means.get('length'), 1)} |")
    lines += ["", "Length: response tokens (cl100k_base). Each teacher's row is over all its scored pairs."]
    missing, partial = len(summary.get("missing") or []), len(summary.get("partial") or [])
    dropped = summary.get("dropped_nonfinite") or 0
    lines.append(f"{summary.get('n_selected', n_pairs)} of {summary.get('n_instructions', n_pairs)} instructions "
                 f"selected; {missing} without a usable candidate, {partial} chosen among only part of their "
                 f"candidates; {dropped} candidates dropped for a NaN or infinite score.")
    lines += ["", "## Format and training", "", f"`{data_files}`: " + FORMATS.get(fmt, fmt) + " Each row also "
              "carries its `id`, `instruction_id`, `teacher` and `selection_score`."]
    if template_file:
        lines += ["", f"The student's tokenizer has no chat template: teachfit scored with its own "
                      f"(`{context.template}`), written here as `{template_file}` (the response and its end of turn "
                      "marked `{% generation %}` for `assistant_only_loss`). Set it on the student's tokenizer "
                      f"before training: `tokenizer.chat_template = open(\"{template_file}\").read()`."]
    elif fmt == "text" and context.template and context.template != "model":
        lines += ["", f"The student's tokenizer has no chat template: the texts are laid out by teachfit's "
                      f"(`{context.template}`); prompt the trained model the same way."]
    elif context.template == "model" and fmt in ("messages", "prompt-completion", "sharegpt"):
        lines += ["", "The pairs were scored with the student's own chat template: train with its tokenizer as it "
                      "is. A template that puts whitespace after the end of turn (ChatML's newline) gives TRL one "
                      "more trained token per pair than teachfit scored, and `assistant_only_loss` needs "
                      "`{% generation %}` markers in the template (TRL adds them to the templates it knows)."]
    lines += ["", "## Reproduce", "",
              f"- teachfit {found.get('teachfit', 'unknown')} "
              f"(" + ", ".join(f"{k} {v}" for k, v in found.items() if k != "teachfit") + ")",
              f"- Command: `{select_command(config)}`"]
    experiment = _experiment(context.run_root)
    if context.run_root is not None:
        lines.append(f"- Run directory: `{context.run_root}`" + (f", study file `{experiment}`" if experiment else ""))
    if context.scores:
        lines.append(f"- Scores: `{context.scores}`")
    return "\n".join(yaml + lines) + "\n"


def _data_name(out: Path) -> str:
    """The data files as the card names them: the file, or a folder output's Arrow shards."""
    return "*.arrow" if out.suffix == "" else out.name


def write_card(context: CardContext, summary: dict[str, Any], out: str | Path, stem_names: bool = False) -> Path:
    """Write the card of the selection written at `out` beside it (see `beside`); returns its path."""
    from teachfit.atomic import atomic_write

    out = Path(out)
    path = beside(out, "README.md", stem_names, ours=lambda text: MARK in text)
    template = (summary.get("files") or {}).get("chat_template")
    text = build_card(context, summary, _data_name(out), Path(template).name if template else None)
    with atomic_write(path) as handle:
        handle.write(text)
    return path


def push_to_hub(repo: str, context: CardContext, summary: dict[str, Any]) -> dict[str, Any]:
    """Upload a written selection to the Hugging Face dataset repository `repo` in one commit: its
    data (the file, or a folder output's files), README.md (the card, naming the files as the
    repository does) and chat_template.jinja when one was written. The token is huggingface_hub's
    own (HF_TOKEN or `hf auth login`). Returns what was uploaded."""
    from teachfit.env import require

    hub = require("huggingface_hub", "hub")
    files = summary.get("files") or {}
    data = Path(files["data"])
    operations: dict[str, Any] = {}
    if data.is_dir():
        for path in sorted(p for p in data.rglob("*") if p.is_file()):
            if path.name not in ("README.md", "chat_template.jinja"):
                operations[path.relative_to(data).as_posix()] = path
    else:
        operations[data.name] = data
    template = files.get("chat_template")
    if template:
        operations["chat_template.jinja"] = Path(template)
    card = build_card(context, summary, _data_name(data), "chat_template.jinja" if template else None)
    api = hub.HfApi()
    url = api.create_repo(repo, repo_type="dataset", exist_ok=True)
    adds = [hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in operations.items()]
    adds.append(hub.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    commit = api.create_commit(repo, operations=adds, repo_type="dataset",
                               commit_message=f"teachfit select: {context.name} ({summary.get('method')}, "
                                              f"{summary.get('n_selected')} pairs)")
    return {"repo": repo, "url": str(getattr(commit, "commit_url", None) or url),
            "files": sorted([*operations, "README.md"])}
