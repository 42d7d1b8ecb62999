"""The result cache holds an index of its lines, not the results: every value read back equals
what was written (against a plain dict), across shards, scan blocks, long lines, keys sharing a
64-bit code, duplicates and damage; the index costs 17 bytes an entry."""
import json
import random

import pytest

from teachfit import keyindex
from teachfit.store import ResultCache, content_hash, line_checksum


def values(n, seed=0):
    rng = random.Random(seed)
    return {content_hash("pair", i): {"loss_self": rng.random(), "n": i, "text": "x" * rng.choice([0, 10, 3000])}
            for i in range(n)}


def test_values_read_back_across_shards_and_scan_blocks(tmp_path, monkeypatch):
    expected = values(3000)
    items = list(expected.items())
    for part in range(3):  # three processes' shards, each written in windows of 97
        cache = ResultCache(tmp_path)
        for start in range(part * 1000, part * 1000 + 1000, 97):
            cache.put_many(items[start:min(start + 97, part * 1000 + 1000)])
        assert cache.get_many([k for k, _ in items[: part * 1000 + 1000]]) == [v for _, v in items[: part * 1000 + 1000]]
        cache.close()
    monkeypatch.setattr(keyindex, "SCAN_BLOCK", 4096)  # lines straddle the blocks of the scan
    reopened = ResultCache(tmp_path)
    assert len(reopened) == 3000 and reopened.skipped_lines == {}
    keys = list(expected)
    random.Random(1).shuffle(keys)
    assert reopened.get_many(keys + [content_hash("absent")]) == [expected[k] for k in keys] + [None]
    assert reopened._index.nbytes == 17 * 3000


def test_keys_sharing_a_code_and_keys_of_any_shape(tmp_path):
    twins = ["0123456789abcdef" + "0" * 16, "0123456789abcdef" + "f" * 16]  # one 64-bit code
    odd = ["x", "caf\u00e9", "K" * 32, "0123456789ABCDEF" * 2]
    cache = ResultCache(tmp_path)
    cache.put_many([(twins[0], {"v": 0})])
    cache.put_many([(twins[1], {"v": 1})] + [(k, {"v": k}) for k in odd])
    cache.close()
    reopened = ResultCache(tmp_path)
    assert reopened.get_many(twins + odd) == [{"v": 0}, {"v": 1}] + [{"v": k} for k in odd]
    assert "0123456789abcdef" + "1" * 16 not in reopened and reopened.skipped_lines == {}


def test_a_damaged_line_gives_way_to_a_later_good_one_and_a_torn_line_is_never_indexed(tmp_path):
    key, other = content_hash("a"), content_hash("b")
    bad = {"key": key, "value": {"v": 2}, "sum": line_checksum(key, {"v": 1})}
    good = {"key": key, "value": {"v": 1}, "sum": line_checksum(key, {"v": 1})}
    torn = json.dumps({"key": other, "value": {"v": 3}, "sum": line_checksum(other, {"v": 3})})[:-5]
    (tmp_path / "shard-a.jsonl").write_text(json.dumps(good) + "\n" + torn)  # killed mid-write
    (tmp_path / "shard-b.jsonl").write_text(json.dumps(bad) + "\n")  # newer: read first
    cache = ResultCache(tmp_path)
    assert cache.skipped_lines == {"malformed": 1} and len(cache) == 2
    assert cache.get(key) == {"v": 1} and cache.get(other) is None
    assert cache.skipped_lines == {"malformed": 1, "checksum": 1}
    cache.put_many([(other, {"v": 3})])  # its own shard, not the torn one
    assert cache.get(other) == {"v": 3}
    cache.close()
    assert (tmp_path / "shard-a.jsonl").read_text().endswith(torn)


@pytest.mark.parametrize("size", [1, 7, 64, 1000])
def test_index_runs_merge_like_a_binary_counter(size):
    index = keyindex.KeyIndex()
    rng = random.Random(size)
    codes = [rng.getrandbits(64) for _ in range(5000)]
    for start in range(0, len(codes), size):
        chunk = codes[start:start + size]
        index.add(keyindex.np.array(chunk, keyindex.np.uint64), keyindex.np.arange(start, start + len(chunk), dtype=keyindex.np.uint64))
    assert len(index._runs) <= 5000 .bit_length() + 1
    assert [[place for place, *_ in found] for found in index.candidates(codes[::37])] == [[i] for i in range(0, 5000, 37)]


def test_content_hashes_equal_content_hash_digit_for_digit():
    from teachfit.store import content_hashes

    material = {"kind": "lm", "model": {"b": 1, "a": [1.5, None]}, "template": "caf\u00e9", "max_length": 2048}
    texts = [("", ""), ("Question \u00e9\u4e2d", "answer \"quoted\" \\ \n\t"), ("lone \ud800 surrogate", "emoji \U0001f600")]
    assert content_hashes(material, texts) == [content_hash(material, a, b) for a, b in texts]
    assert content_hashes("x", [(1, {"z": 1, "a": 2})]) == [content_hash("x", 1, {"z": 1, "a": 2})]


def test_digest_table_against_a_dict():
    import hashlib

    table, plain, rng = keyindex.DigestTable(capacity=4), {}, random.Random(3)
    digests = [hashlib.sha256(str(rng.randrange(3000)).encode()).digest()[:16] for _ in range(5000)]
    digests += [bytes(16), bytes(8) + b"\x01" * 8]  # zero high halves (a slot is marked used apart, so 0 is a digest like any other)
    digests += [(1).to_bytes(8, "big") + b"\x01" * 8]
    for number, digest in enumerate(digests):
        assert table.get(digest) == plain.get(digest)
        if digest not in plain:
            table.add(digest, number)
            plain[digest] = number
    assert len(table) == len(plain) and all(table.get(d) == n for d, n in plain.items())


def test_digest_table_grows_without_python_lists():
    """Growing rehashes in numpy, a chunk at a time: the peak beyond the old table stays under 1.5x
    the new arrays (25 bytes a slot), where lists of every entry as Python ints took ~120 bytes an
    entry more (the peak ~2.4x them)."""
    import hashlib
    import tracemalloc

    table, entries = keyindex.DigestTable(capacity=1 << 19), 1 << 18
    digests = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(entries + 1)]
    for number, digest in enumerate(digests[:-1]):
        table.add(digest, number)
    tracemalloc.start()
    table.add(digests[-1], entries)  # the table grows to 1 << 20 slots
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(table._used) == 1 << 20 and peak < 1.5 * 25 * (1 << 20), peak
    assert all(table.get(d) == n for n, d in enumerate(digests)) and len(table) == entries + 1
