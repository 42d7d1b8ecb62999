"""Bad input gets a clear error naming the file, the line and the reason."""
import json

import pytest

from conftest import write_pairs
from teachfit.files import expand_inputs, read_pairs
from teachfit.records import InputError, ReadStats, instruction_id


def test_formats_are_read(tmp_path):
    path = write_pairs(tmp_path / "t.jsonl", [
        {"id": 1, "instruction": "Hi", "response": "Hello"},
        {"instruction": "Sum", "input": "1 2", "output": "3"},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "teacher": "m"},
        {"conversations": [{"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
    ])
    pairs = list(read_pairs([path]))
    assert [p.instruction for p in pairs] == ["Hi", "Sum\n\n1 2", "Q", "Q2"]
    assert [p.response for p in pairs] == ["Hello", "3", "A", "A2"]
    assert [p.teacher for p in pairs] == ["t", "t", "m", "t"]
    assert pairs[0].id == "1" and pairs[2].id == instruction_id("Q")


@pytest.mark.parametrize("line,reason", [
    ('{"instruction": "x", "response": ', "malformed JSON"),
    ('{"instruction": "x"}', "missing field: 'response'"),
    ('{"response": "y"}', "missing field: 'instruction'"),
    ('{"instruction": "x", "response": "   "}', "empty response"),
    ('{"instruction": "", "response": "y"}', "empty instruction"),
    ('[1, 2]', "not a JSON object"),
])
def test_bad_rows_name_file_line_and_reason(tmp_path, line, reason):
    path = write_pairs(tmp_path / "bad.jsonl", [{"instruction": "ok", "response": "fine"}, line])
    with pytest.raises(InputError) as caught:
        list(read_pairs([path]))
    assert caught.value.line == 2 and reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}:2: ")


def test_skip_invalid_records_and_counts(tmp_path):
    path = write_pairs(tmp_path / "bad.jsonl", [{"instruction": "ok", "response": "fine"}, "{oops",
                                                 {"instruction": "x", "response": ""}])
    stats = ReadStats()
    pairs = list(read_pairs([path], skip_invalid=True, stats=stats))
    assert len(pairs) == 1 and stats.read == 1
    assert [s["line"] for s in stats.skipped] == [2, 3]
    assert stats.counts == {"dropped_malformed_JSON": 1, "dropped_empty_response": 1}


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown format '.txt'"):
        list(read_pairs([tmp_path / "x.txt"]))
    with pytest.raises(InputError, match="file not found"):
        expand_inputs([tmp_path / "nope.jsonl"])


def test_parquet_rows_are_numbered(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "response": "b"}, {"instruction": "c", "response": ""}]),
                   tmp_path / "t.parquet")
    with pytest.raises(InputError) as caught:
        list(read_pairs([tmp_path / "t.parquet"]))
    assert caught.value.line == 2


def test_reading_parquet_keeps_arrow_memory_flat(tmp_path):
    # pyarrow's pre-buffering reader kept the row groups it had read until the file closed
    # (apache/arrow#39808): memory grew with the file, +320 MB over a 2M-pair Zoo file
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, path = random.Random(0), tmp_path / "many_groups.parquet"
    columns = ("instruction", "response", "notes", "more_notes")
    with pq.ParquetWriter(path, pa.schema([("id", pa.string())] + [(n, pa.string()) for n in columns])) as out:
        for group in range(6):  # 6 row groups of 16 MB of text that compression cannot shrink
            ids = [f"g{group}r{i}" for i in range(2000)]
            out.write_table(pa.table({"id": ids, **{n: [rng.randbytes(1024).hex() for _ in ids] for n in columns}}))
    pairs = read_pairs([path])
    for _ in range(2000):
        next(pairs)
    after_first_group, most = pa.total_allocated_bytes(), 0
    for number, _ in enumerate(pairs):  # (the reader and all it kept are freed once it is exhausted)
        most = max(most, pa.total_allocated_bytes()) if number % 500 == 0 else most
    assert number + 1 == 5 * 2000
    assert most - after_first_group < 16 * 2**20  # was +63 MB by the last group
