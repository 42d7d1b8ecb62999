"""Instruction sets: read, validate (empty, malformed, duplicate) and identify instructions.

Accepted records: {"instruction", "input"?}, {"prompt"}, {"messages"/"conversations": first user
turn}, Arena-Hard's {"question_id", "turns": [{"content"}]}. Ids come from `id` or
`question_id`, else from a hash of the text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from teachfit.records import InputError, instruction_id, iter_raw_records


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
        return f"{text}\n\n{record['input']}" if record.get("input") else text
    if "prompt" in record:
        return record["prompt"]
    if "turns" in record and record["turns"]:
        turn = record["turns"][0]
        return turn.get("content") if isinstance(turn, dict) else turn
    for key, role_key, text_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        if key in record:
            return next((t.get(text_key) for t in record[key] if t.get(role_key) in ("user", "human")), None)
    raise ValueError("missing field: 'instruction' (or 'prompt', 'turns', 'messages')")


def read_instructions(paths: Sequence[str | os.PathLike], skip_invalid: bool = False,
                      skipped: list[dict[str, Any]] | None = None) -> list[Instruction]:
    """All instructions of the files, validated; bad ones raise InputError (file:line: reason)
    unless skip_invalid, which records them in `skipped`."""
    found: list[Instruction] = []
    seen_text: dict[str, str] = {}
    seen_id: dict[str, str] = {}
    for path in paths:
        for number, record in iter_raw_records(path):
            try:
                found.append(_validate(path, number, record, seen_text, seen_id))
            except InputError as error:
                if not skip_invalid:
                    raise
                if skipped is not None:
                    skipped.append({"path": error.path, "line": error.line, "reason": error.reason})
    return found


def _validate(path: Any, number: int, record: Any, seen_text: dict[str, str], seen_id: dict[str, str]) -> Instruction:
    if isinstance(record, InputError):
        raise record
    if not isinstance(record, dict):
        raise InputError(path, number, f"not a JSON object: {type(record).__name__}")
    try:
        text = _text(record)
    except ValueError as error:
        raise InputError(path, number, str(error)) from None
    if not isinstance(text, str) or not text.strip():
        raise InputError(path, number, "empty instruction")
    where = f"{path}:{number}"
    if text in seen_text:
        raise InputError(path, number, f"duplicate instruction (first at {seen_text[text]})")
    raw_id = record.get("id", record.get("question_id"))
    ident = str(raw_id) if raw_id not in (None, "") else instruction_id(text)
    if ident in seen_id:
        raise InputError(path, number, f"duplicate id '{ident}' (first at {seen_id[ident]})")
    seen_text[text], seen_id[ident] = where, where
    return Instruction(id=ident, text=text, source=where, category=str(record.get("category", "")))
