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
