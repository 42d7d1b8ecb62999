"""The one reader of YAML files (study files and `--config` files): safe, bounded, with line numbers.

PyYAML's safe loader still expands aliases, so a few hundred bytes of nested `&a [*b, *b, ...]`
become billions of nodes (the "billion laughs"): here an alias or an anchor is refused at its
line. A key given twice is refused at the second line (PyYAML keeps the last one silently).
Invalid YAML and bytes that are not UTF-8 are one InputError naming the file (and the line).
Returns the data with the line of every key and list item, so later checks can say file:line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from teachfit.records import InputError

MAX_BYTES = 1 << 20  # a study file is a page of text; a 1 MiB one is a mistake (or an attack)


def _loader_class() -> type:
    import yaml

    class Refused(yaml.MarkedYAMLError):
        """Valid YAML that a teachfit file may not contain."""

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader without aliases and without duplicate keys."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                mark = event.start_mark
                raise Refused(problem="anchors and aliases (&name, *name) are not allowed in teachfit "
                                                   "files; write the values out", problem_mark=mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    raise Refused(problem="a key must be a plain name", problem_mark=key_node.start_mark)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise Refused(problem=f"duplicate key '{key}' (first at line {seen[key]})",
                                               problem_mark=key_node.start_mark)
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    StrictLoader.Refused = Refused
    return StrictLoader


def key_lines(node: Any, prefix: tuple = ()) -> dict[tuple, int]:
    """Line number (from 1) of every key and list item of a composed YAML node, by path."""
    import yaml

    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines[path] = key.start_mark.line + 1
            lines.update(key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            lines.update(key_lines(item, prefix + (index,)))
    return lines


def line_of(lines: dict[tuple, int], where: tuple) -> int | None:
    """The line of the key path `where` (from key_lines), or of its nearest enclosing key."""
    return next((lines[where[:n]] for n in range(len(where), 0, -1) if where[:n] in lines), None)


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """(data, line of every key path) of a YAML file; InputError naming the file on anything wrong."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, None, "is a folder, not a YAML file") from None
    if len(raw) > MAX_BYTES:
        raise InputError(path, None, f"{len(raw)} bytes: larger than the {MAX_BYTES} bytes a teachfit YAML file may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError(path, line, f"not UTF-8 text (byte 0x{raw[error.start]:02x})") from None
    loader_class = _loader_class()
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        prefix = "" if isinstance(error, loader_class.Refused) else "not valid YAML: "
        raise InputError(path, mark.line + 1 if mark else None, f"{prefix}{problem}") from None
    finally:
        loader.dispose()
    return data, key_lines(node) if node is not None else {}
