"""Instruction sets: read, validate (empty, malformed, duplicate) and identify instructions.

Accepted records: {"instruction", "input"?}, {"prompt"}, {"messages"/"conversations": first user
turn}, Arena-Hard's {"question_id", "turns": [{"content"}]}. Ids come from `id` or
`question_id`, else from a hash of the text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from teachfit.files import read_records
from teachfit.records import InputError, has_lone_surrogate, instruction_id, location


@dataclass(frozen=True)
class Instruction:
    """One instruction to answer, with where it came from."""

    id: str
    text: str
    source: str
    category: str = ""


def _text(record: dict[str, Any]) -> Any:
    if "instruction" in record:
        text = record["instruction"]
        extra = record.get("input")
        return f"{text}\n\n{extra}" if extra and isinstance(text, str) and isinstance(extra, str) else text
    if "prompt" in record:
        return record["prompt"]
    if "turns" in record and record["turns"]:
        turn = record["turns"][0]
        return turn.get("content") if isinstance(turn, dict) else turn
    for key, role_key, text_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        if key in record:
            turns = record[key]
            if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                raise ValueError(f"wrong type: '{key}' must be a list of objects with '{role_key}' and '{text_key}'")
            return next((t.get(text_key) for t in turns if t.get(role_key) in ("user", "human")), None)
    raise ValueError("missing field: 'instruction' (or 'prompt', 'turns', 'messages')")


def read_instructions(paths: Sequence[str | os.PathLike], skip_invalid: bool = False,
                      skipped: list[dict[str, Any]] | None = None) -> list[Instruction]:
    """All instructions of the files, validated; bad ones raise InputError (file:line: reason)
    unless skip_invalid, which records them in `skipped`."""
    found: list[Instruction] = []
    seen_text: dict[str, str] = {}
    seen_id: dict[str, str] = {}
    for path in paths:
        rows = 0

        def skip(error: InputError) -> None:
            nonlocal rows
            rows += 1
            if skipped is not None:
                skipped.append(error.as_row())

        for number, record in read_records(path, skip if skip_invalid else None):
            rows += 1
            try:
                found.append(_validate(path, number, record, seen_text, seen_id))
            except InputError as error:
                if not skip_invalid:
                    raise
                if skipped is not None:
                    skipped.append(error.as_row())
        if not rows:
            raise InputError(path, None, f"no instructions in {path}")
    if paths and not found:
        raise InputError(paths[0], None, "no valid instructions (every one was skipped)")
    return found


def _validate(path: Any, number: int, record: dict[str, Any], seen_text: dict[str, str],
              seen_id: dict[str, str]) -> Instruction:
    try:
        text = _text(record)
    except ValueError as error:
        raise InputError(path, number, str(error)) from None
    if text is not None and not isinstance(text, str):
        raise InputError(path, number, f"wrong type: the instruction is not a string ({type(text).__name__})")
    if text is None or not text.strip():
        raise InputError(path, number, "empty instruction")
    if has_lone_surrogate(text):
        raise InputError(path, number, "invalid unicode (lone surrogate) in the instruction")
    where = location(path, number)
    if text in seen_text:
        raise InputError(path, number, f"duplicate instruction (first at {seen_text[text]})")
    raw_id = record.get("id", record.get("question_id"))
    ident = str(raw_id) if raw_id not in (None, "") else instruction_id(text)
    if ident in seen_id:
        raise InputError(path, number, f"duplicate id '{ident}' (first at {seen_id[ident]})")
    seen_text[text], seen_id[ident] = where, where
    return Instruction(id=ident, text=text, source=where, category=str(record.get("category", "")))
