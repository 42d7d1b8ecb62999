"""The training set as files: a selection's rows with their texts, in the format a trainer reads
(messages, TRL's prompt-completion, text rendered with the scored template, alpaca, sharegpt),
with the chat template teachfit scored with beside conversational formats when the student has
none, and a dataset card (teachfit.dataset_card). The student's tokenizer and template come from
the scores file's metadata (its scorers), so the data is what was measured."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from teachfit.atomic import write_json_atomic
from teachfit.records import instruction_key, pair_instruction

FORMATS = ("messages", "prompt-completion", "text", "alpaca", "sharegpt")
CONVERSATIONAL = ("messages", "prompt-completion", "sharegpt")  # rendered by the tokenizer's chat template


def attach_texts(selection: Any, pairs: Iterable[Any]) -> list[dict[str, Any]]:
    """The selected rows with `instruction` and `response` joined from Pairs (records.Pair) by
    (teacher, id). A selected row whose pair is not among `pairs` is an error naming it."""
    rows = list(selection.rows) if hasattr(selection, "rows") else list(selection)  # a Selection, or rows
    texts = {(p.teacher, p.id): p for p in pairs}
    out, absent = [], []
    for row in rows:
        pair = texts.get((str(row["teacher"]), str(row["id"])))
        if pair is None:
            absent.append(f"{row['teacher']}/{row['id']}")
            continue
        out.append(dict(row, instruction=pair.instruction, response=pair.response))
    if absent:
        raise ValueError(f"no response text for {len(absent)} selected pair(s), e.g. {absent[:5]}: "
                         "give the response files the scores were made from")
    return out


@dataclass
class SelectedTexts:
    """What writing a selection needs of all the pairs, gathered in one pass (selected_texts): the
    selected pairs (records.Pair), by (teacher, id), and the instructions among all the pairs that
    the selection neither chose from nor reports missing (records.instruction_key)."""

    pairs: dict[tuple[str, str], Any]
    unscored: set[str]


def selected_texts(selection: Any, pairs: Iterable[Any]) -> SelectedTexts:
    """Stream `pairs` once and keep only the selected ones (by (teacher, id); the last of a repeated
    pair) and the keys of unscored instructions: 2M pairs with their texts are never held at once."""
    rows = list(selection.rows) if hasattr(selection, "rows") else list(selection)
    wanted = {(str(row["teacher"]), str(row["id"])) for row in rows}
    summary = getattr(selection, "summary", {})
    known = {instruction_key(row) for row in rows} | set(summary.get("missing", []))
    found: dict[tuple[str, str], Any] = {}
    unscored: set[str] = set()
    for pair in pairs:
        if (pair.teacher, pair.id) in wanted:
            found[(pair.teacher, pair.id)] = pair
        key = pair_instruction(pair)
        if key not in known:
            unscored.add(key)
    return SelectedTexts(pairs=found, unscored=unscored)


def format_row(row: dict[str, Any], fmt: str = "messages", tokenizer: Any = None) -> dict[str, Any]:
    """One selected row with text as a training record in `fmt`, plus its teacher, score and ids.
    prompt-completion is TRL's conversational layout ([user] / [assistant]: SFTTrainer trains on the
    completion only); text is the pair rendered with the student's chat template, exactly the tokens
    scored (template.training_text: needs the student's `tokenizer`, its template set)."""
    x, y = row["instruction"], row["response"]
    if fmt == "messages":
        record: dict[str, Any] = {"messages": [{"role": "user", "content": x}, {"role": "assistant", "content": y}]}
    elif fmt == "prompt-completion":
        record = {"prompt": [{"role": "user", "content": x}], "completion": [{"role": "assistant", "content": y}]}
    elif fmt == "text":
        if tokenizer is None:
            raise ValueError("the text format needs the student's tokenizer (the template the pairs were scored with)")
        from teachfit.template import training_text

        record = {"text": training_text(tokenizer, x, y)}
    elif fmt == "alpaca":
        record = {"instruction": x, "input": "", "output": y}
    elif fmt == "sharegpt":
        record = {"conversations": [{"from": "human", "value": x}, {"from": "gpt", "value": y}]}
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    record.update(id=str(row["id"]), instruction_id=str(row["instruction_id"]), teacher=str(row["teacher"]),
                  selection_score=float(row["selection_score"]))
    return record


def _clean(value: Any) -> Any:
    """NaN -> None, recursively, so the summary is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_selection(selection: Any, pairs: Iterable[Any] | SelectedTexts | None, out: str | Path,
                    fmt: str = "messages", tokenizer: Any = None, chat_template: str | None = None,
                    stem_names: bool = False) -> dict[str, Any]:
    """Write the selection as training records to `out`: .jsonl or .parquet (summary in the
    metadata: `<out>.meta.json` or the Parquet key `teachfit`), or a `datasets` save_to_disk folder
    when `out` has no suffix (summary in `<out>/teachfit_selection.json`). `pairs` supplies the texts
    (None when the rows already carry them; an iterable of Pairs, read once, or their SelectedTexts);
    instructions among the pairs that have no score row at all are added to the summary's `missing`.
    `tokenizer`: the student's, for the text format.
    `chat_template`: written beside a conversational format as chat_template.jinja (the template
    the pairs were scored with, when the student has none; dataset_card.beside says where, and
    `stem_names` names it <stem>.chat_template.jinja). Returns the summary written (`files`: what
    was written)."""
    from teachfit.files import write_table

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    summary = dict(selection.summary, format=fmt)
    if pairs is not None:
        texts = pairs if isinstance(pairs, SelectedTexts) else selected_texts(selection, pairs)
        rows = attach_texts(selection, texts.pairs.values())
        summary["missing"] = list(summary.get("missing", [])) + sorted(texts.unscored)
    else:
        rows = selection.rows
    from teachfit.atomic import strict_json

    records = [strict_json(format_row(r, fmt, tokenizer)) for r in rows]  # strict JSON: no NaN / Infinity tokens
    summary = strict_json(_clean(summary))
    out = Path(out)
    if out.suffix in (".jsonl", ".parquet"):
        write_table(out, records, summary)
    elif out.suffix == "":
        from teachfit.env import require

        datasets = require("datasets", "train")
        datasets.Dataset.from_list(records).save_to_disk(str(out))
        write_json_atomic(out / "teachfit_selection.json", summary)
    else:
        raise ValueError(f"unknown output format '{out.suffix}': use .jsonl, .parquet or a folder (no suffix)")
    files = {"data": str(out)}
    if chat_template and fmt in CONVERSATIONAL:
        from teachfit.atomic import atomic_write
        from teachfit.dataset_card import beside

        jinja = beside(out, "chat_template.jinja", stem_names, ours=lambda text: text == chat_template)
        with atomic_write(jinja) as handle:
            handle.write(chat_template)
        files["chat_template"] = str(jinja)
    return summary | {"files": files}


def student_scorer(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The student's scorer description (role 'self') in a scores file's metadata, or None."""
    for scorer in metadata.get("scorers") or []:
        if isinstance(scorer, dict) and scorer.get("role") == "self":
            return scorer
    return None


def student_tokenizer(metadata: dict[str, Any]) -> tuple[Any, str]:
    """(tokenizer, template name) of the student a scores file was made with, its chat template
    set as scoring set it (the model's, or teachfit's default when it has none): the tokenizer of
    the template source a served student recorded, else of the student's spec (hf id or folder,
    gguf:, packaged:). Only the tokenizer loads, not the model. A template other than the one the
    scores record is an error (the text would not be the scored tokens)."""
    scorer = student_scorer(metadata)
    if scorer is None:
        raise ValueError("the scores file does not record its student (no 'self' scorer in its metadata), "
                         "so the template the pairs were scored with is unknown")
    source = scorer.get("template_source") or (scorer.get("model") or {}).get("spec")
    from teachfit.score.served import load_template_tokenizer

    trust = bool((metadata.get("options") or {}).get("trust_remote_code", False))
    tokenizer, name, _ = load_template_tokenizer(str(source), trust)
    recorded = scorer.get("template")
    if recorded and recorded != name:
        raise ValueError(f"the pairs were scored with the chat template '{recorded}', but {source}'s tokenizer now "
                         f"gives '{name}': score again, or choose another format")
    return tokenizer, name


def student_template(metadata: dict[str, Any], tokenizer_needed: bool) -> tuple[Any, str | None, str]:
    """(tokenizer or None, template name or None, a note) for writing a selection: the tokenizer
    loads only when `tokenizer_needed` (the text format) or when the scores do not say which
    template was used (their model was never loaded: every result came from the cache); a student
    that cannot be loaded then leaves the template unknown (note), unless the tokenizer is needed."""
    scorer = student_scorer(metadata)
    name = scorer.get("template") if scorer else None
    if not tokenizer_needed and (name or scorer is None):
        return None, name, "" if scorer else "the scores file does not record its student"
    try:
        tokenizer, name = student_tokenizer(metadata)
    except Exception as error:  # noqa: BLE001 - the template is a convenience unless the text format needs it
        if tokenizer_needed:
            raise
        return None, None, f"the student's chat template is unknown ({str(error).splitlines()[0][:200]})"
    return tokenizer, name, ""
