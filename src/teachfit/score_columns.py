"""A scores table read as columns: numpy arrays with one entry per pair, in the table's order.

rank reads millions of pairs this way, with no dict per row. The table is either rows (dicts, as
callers and tests hand them over) or an Arrow table (a Parquet scores file, files.read_table_columnar).
Values read as score_rows.number reads them (a float; NaN where missing); a value that is not a
number is marked `bad`, and is an error (number's) only where the caller uses it. Numeric Arrow
columns are converted in C; odd ones (text, lists) go through Python, value by value, as rows do.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from teachfit.records import _SAMPLE_SUFFIX, instruction_key
from teachfit.score_rows import number


class ScoreColumns:
    """Columns of a scores table (rows or a pyarrow.Table), converted on first use and kept."""

    def __init__(self, data: Any) -> None:
        self.table = data if hasattr(data, "column_names") else None
        self.rows: Sequence[dict[str, Any]] = [] if self.table is not None else data
        self._floats: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._codes: dict[str, tuple[np.ndarray, list[str]]] = {}

    def __len__(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.rows)

    def row(self, index: int) -> dict[str, Any]:
        """Row `index` as a dict (for messages)."""
        return self.table.slice(int(index), 1).to_pylist()[0] if self.table is not None else self.rows[int(index)]

    def has(self, name: str) -> bool:
        """Whether any row has the column."""
        return name in self.table.column_names if self.table is not None else any(name in r for r in self.rows)

    def everyone_has(self, name: str) -> bool:
        """Whether every row has the column."""
        return name in self.table.column_names if self.table is not None else all(name in r for r in self.rows)

    def rows_of_pairs(self, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(str(teacher), str(id)) -> the index of the last row with them, for the pairs in `wanted`."""
        if self.table is None:
            return {key: i for i, r in enumerate(self.rows) if (key := (str(r["teacher"]), str(r["id"]))) in wanted}
        import pyarrow as pa
        import pyarrow.compute as pc

        teacher, ids = self._strings("teacher"), self._strings("id")
        if teacher is None or ids is None:  # not text: str() of each value, as rows do
            both = self.table.select(["teacher", "id"]).to_pylist()
            return {key: i for i, r in enumerate(both) if (key := (str(r["teacher"]), str(r["id"]))) in wanted}
        joined = pc.binary_join_element_wise(teacher, ids, "\x1f")  # a first sieve; the tuples decide
        sieve = pa.array([f"{t}\x1f{i}" for t, i in wanted], pa.string())
        candidates = np.flatnonzero(pc.is_in(joined, value_set=sieve).to_numpy(zero_copy_only=False))
        keys = zip(teacher.take(candidates).to_pylist(), ids.take(candidates).to_pylist())
        return {key: int(i) for i, key in zip(candidates, keys) if key in wanted}

    def present(self, name: str, index: int) -> bool:
        """Whether row `index` has the column (a table's row always has every column)."""
        return name in self.table.column_names if self.table is not None else name in self.rows[int(index)]

    def blank(self, name: str) -> np.ndarray:
        """Per row: the value is missing, None or '' (bool array)."""
        if self.table is None:
            return np.array([r.get(name) is None or r.get(name) == "" for r in self.rows], dtype=bool)
        if name not in self.table.column_names:
            return np.ones(len(self), dtype=bool)
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self.table.column(name)
        empty = pc.is_null(column)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            empty = pc.or_kleene(empty, pc.equal(column, ""))
        return np.asarray(pc.fill_null(empty, True).to_numpy(zero_copy_only=False), dtype=bool)

    def floats(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(the column as float64, NaN where missing or not a number; per row, whether the value is
        there but not a number, or None when no value is)."""
        if name not in self._floats:
            self._floats[name] = self._convert(name)
        return self._floats[name]

    def raise_bad(self, name: str, index: int) -> None:
        """Raise number()'s ValueError for row `index` (its `name` is not a number)."""
        number(self.row(index), name)
        raise AssertionError(f"row {index}'s {name} is a number")  # floats() marked it bad: never here

    def _convert(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        if self.table is not None and name in self.table.column_names:
            import pyarrow as pa

            column = self.table.column(name)
            kind = column.type
            if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind) \
                    or pa.types.is_null(kind):
                values = column.cast(pa.float64(), safe=False).to_numpy()  # nulls -> NaN; read-only: never written
                return np.asarray(values, dtype=float), None
            values_of: Sequence[Any] = column.to_pylist()
        elif self.table is not None:
            return np.full(len(self), math.nan), None
        else:
            values_of = [r.get(name) for r in self.rows]
        out = np.empty(len(values_of))
        bad = np.zeros(len(values_of), dtype=bool)
        for i, value in enumerate(values_of):
            try:
                out[i] = math.nan if value is None else float(value)
            except (TypeError, ValueError):
                out[i], bad[i] = math.nan, True
        return out, (bad if bad.any() else None)

    def codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        """(per row, the code of str(value) of a column every row has; the strings, by code, in order of
        first appearance). `teacher` and `instruction` (records.instruction_key) are the ones used."""
        if name not in self._codes:
            self._codes[name] = self._arrow_codes(name) if self.table is not None else self._row_codes(name)
        return self._codes[name]

    def _row_codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        key = instruction_key if name == "instruction" else (lambda row: str(row[name]))
        seen: dict[str, int] = {}
        codes = np.fromiter((seen.setdefault(key(r), len(seen)) for r in self.rows), dtype=np.int64,
                            count=len(self.rows))
        return codes, list(seen)

    def _arrow_codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        import pyarrow as pa

        strings = self._instruction_keys() if name == "instruction" else self._strings(name)
        if strings is None:  # not text: str() of each value, as rows do (of the columns the key reads only)
            needed = ("id", "instruction_id") if name == "instruction" else (name,)
            self.rows = self.table.select([n for n in needed if n in self.table.column_names]).to_pylist()
            try:
                return self._row_codes(name)
            finally:
                self.rows = []
        encoded = strings.dictionary_encode() if isinstance(strings, pa.Array) else strings
        return (np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64),
                encoded.dictionary.to_pylist())

    def _strings(self, name: str) -> Any:
        """The column as one Arrow string array, or None when it holds something else than text."""
        import pyarrow as pa

        column = self.table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        return column if pa.types.is_string(column.type) and column.null_count == 0 else None

    def _instruction_keys(self) -> Any:
        """records.instruction_key of every row as one Arrow string array (None: not text)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if "instruction_id" in self.table.column_names:
            given = self.table.column("instruction_id").combine_chunks()
            if not (pa.types.is_string(given.type) or pa.types.is_null(given.type)):
                return None
            use = pc.fill_null(pc.not_equal(given.cast(pa.string()), ""), False)
        else:
            given, use = None, None
        ids = self._strings("id") if "id" in self.table.column_names else None
        if ids is None:
            return None
        if not pc.any(pc.match_substring(ids, "#s")).as_py():
            return pc.if_else(use, given.cast(pa.string()), ids) if given is not None else ids
        keys = pc.replace_substring_regex(ids, _SAMPLE_SUFFIX.pattern, "")
        # Python's \d is any Unicode digit and its $ also matches before a final newline: such ids in Python
        odd = np.flatnonzero(pc.match_substring_regex(ids, r"[\n]|[^\x00-\x7f]").to_numpy(zero_copy_only=False))
        if len(odd):
            fixed = [_SAMPLE_SUFFIX.sub("", ids[int(i)].as_py()) for i in odd]
            keys = pa.array(_replaced(keys.to_pylist(), odd, fixed), pa.string())
        return pc.if_else(use, given.cast(pa.string()), keys) if given is not None else keys


def _replaced(values: list[Any], where: np.ndarray, new: list[Any]) -> list[Any]:
    for i, value in zip(where, new):
        values[int(i)] = value
    return values
