"""Where each cached result lies, held compactly: 17 bytes per entry, never the results themselves.

The result cache (teachfit.store) keeps its JSONL shards on disk and, in memory, only this index:
a key's 64-bit code -> its line's location (shard number, byte offset). A 10M-entry cache is
170 MB of index, found by scanning the shards' bytes with numpy (the keys sit at a fixed place
in each line), not by parsing every line. A code is a key's first 16 hex digits (content_hash
keys), or 8 bytes of its blake2b for any other key: two keys sharing a code are told apart when
the line is read (its full key must match), so a code collision costs a read, never a wrong value.

Entries added later (each window's results) are sorted runs merged like a binary counter: at most
log2(n) runs, each looked up with one vectorized searchsorted, and n log n work in all.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

OFFSET_BITS = 40  # a location is shard number << 40 | byte offset: shards up to 1 TiB, 2**24 shards
LINE_PREFIX = b'{"key": "'  # how store.ResultCache writes every line: json.dumps({"key": ..., ...})
HEX_KEY = 32  # content_hash: 32 hex digits
_HEX_KEY = re.compile(f"[0-9a-f]{{{HEX_KEY}}}")
GROW_CHUNK = 65_536  # old slots rehashed at once when a DigestTable grows
SCAN_BLOCK = 16 * 1024 * 1024  # bytes of a shard read at once while scanning (its index matrices: ~5x that)

_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)  # the 16 leading hex digits, most significant first


def key_code(key: str) -> int:
    """The 64-bit code of a key (see the module's docstring)."""
    if _HEX_KEY.fullmatch(key):
        return int(key[:16], 16)
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def location(shard: int, offset: int) -> int:
    """The packed location of a line: shard number and byte offset."""
    return shard << OFFSET_BITS | offset


def unpack(packed: int) -> tuple[int, int]:
    """(shard number, byte offset) of a packed location."""
    return packed >> OFFSET_BITS, packed & ((1 << OFFSET_BITS) - 1)


class KeyIndex:
    """Key codes -> packed locations, as sorted runs (uint64 codes, uint64 locations, and whether
    each line was checked already: a line read twice in a process is checked once)."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # largest (oldest) first

    def __len__(self) -> int:
        return sum(len(run[0]) for run in self._runs)

    @property
    def nbytes(self) -> int:
        """Memory the index holds, in bytes (17 an entry)."""
        return sum(sum(part.nbytes for part in run) for run in self._runs)

    @classmethod
    def from_parts(cls, code_parts: list[np.ndarray], place_parts: list[np.ndarray]) -> "KeyIndex":
        """An index of scanned parts (in age order, oldest first), emptying the two lists as it goes,
        so that opening a large cache holds about twice the index at its peak, not four times."""
        index = cls()
        if code_parts:
            codes = np.concatenate(code_parts)
            code_parts.clear()
            places = np.concatenate(place_parts)
            place_parts.clear()
            # not a stable sort (a radix sort's scratch memory): equal codes are all tried when read
            order = np.argsort(codes)
            codes.sort()  # in place: the same values as codes[order]
            places = _take_in_chunks(places, order)
            index._runs.append((codes, places, np.zeros(len(codes), bool)))
        return index

    def add(self, codes: np.ndarray, places: np.ndarray, checked: bool = False) -> None:
        """Index entries (codes and locations of equal length); later entries are tried first.
        `checked`: their lines are known good (this process wrote them)."""
        if len(codes) == 0:
            return
        run = (np.asarray(codes, np.uint64), np.asarray(places, np.uint64), np.full(len(codes), checked))
        while self._runs and len(self._runs[-1][0]) <= len(run[0]):
            older = self._runs.pop()
            run = tuple(np.concatenate([old, new]) for old, new in zip(older, run))
        order = np.argsort(run[0], kind="stable")  # equal codes keep their age order: older first
        self._runs.append(tuple(part[order] for part in run))

    def candidates(self, codes: Sequence[int]) -> list[list[tuple[int, bool, int, int]]]:
        """For each code, its entries newest first (usually none or one), each as (location,
        checked, run, position): mark_checked(run, position) records a good line (until the
        next add)."""
        query = np.asarray(codes, dtype=np.uint64)
        found: list[list[tuple[int, bool, int, int]]] = [[] for _ in range(len(query))]
        for number in range(len(self._runs) - 1, -1, -1):  # newest run first
            run_codes, run_places, run_checked = self._runs[number]
            low = np.searchsorted(run_codes, query, "left")
            high = np.searchsorted(run_codes, query, "right")
            for i in np.flatnonzero(high > low).tolist():
                for position in range(int(high[i]) - 1, int(low[i]) - 1, -1):  # newest first within a run
                    found[i].append((int(run_places[position]), bool(run_checked[position]), number, position))
        return found

    def mark_checked(self, run: int, position: int) -> None:
        """Record that the line of an entry (as candidates() gave it) was read and found good."""
        self._runs[run][2][position] = True


def _take_in_chunks(values: np.ndarray, order: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """values[order], without a temporary copy of the whole result beside it."""
    taken = np.empty_like(values)
    for start in range(0, len(order), chunk):
        taken[start:start + chunk] = values[order[start:start + chunk]]
    return taken


def scan_shard(path: Path, shard: int, on_odd_line: Callable[[bytes], int | None]) -> tuple[np.ndarray, np.ndarray]:
    """(codes, locations) of the complete lines of one shard whose key sits where store writes it.
    Any other non-blank line (an unusual key, a damaged line) goes to `on_odd_line`, which returns
    its key code or None (not indexed). A last line without its newline (a kill mid-write) is
    passed on too, and never indexed. Lines are not validated here: reading a value checks it."""
    codes, places = [], []
    for block_start, lines, line_starts in _complete_lines(path):
        if line_starts is None:
            on_odd_line(lines[:-1])
            continue
        good = _well_placed_keys(lines, line_starts)
        for start in line_starts[~good].tolist():
            end = lines.find(b"\n", start)
            raw = lines[start:end]
            code = on_odd_line(raw) if raw.strip() else None
            if code is not None:
                codes.append(np.array([code], np.uint64))
                places.append(np.array([location(shard, block_start + start)], np.uint64))
        starts = line_starts[good]
        codes.append(_hex_codes(lines, starts))
        places.append((starts.astype(np.uint64) + np.uint64(block_start)) | np.uint64(location(shard, 0)))
    empty = np.zeros(0, np.uint64)
    return (np.concatenate(codes) if codes else empty), (np.concatenate(places) if places else empty)


def _complete_lines(path: Path) -> Iterator[tuple[int, bytes, np.ndarray | None]]:
    """(offset of the block in the file, the block's complete lines, the start of each line); last,
    a torn last line (no newline: a kill mid-write) with None for its starts."""
    with path.open("rb") as handle:
        offset, carried = 0, b""
        while True:
            block = handle.read(SCAN_BLOCK)
            data = carried + block
            if not block:
                if data.strip():  # a torn last line: passed on as odd, never indexed
                    yield offset, data + b"\n", None
                return
            ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
            if len(ends) == 0:
                carried = data
                continue
            complete = int(ends[-1]) + 1
            yield offset, data[:complete], np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
            offset, carried = offset + complete, data[complete:]


def _well_placed_keys(lines: bytes, starts: np.ndarray) -> np.ndarray:
    """Whether each line starts with '{"key": "' + 32 lowercase hex digits + '"'."""
    width = len(LINE_PREFIX) + HEX_KEY + 1
    buffer = np.frombuffer(lines, np.uint8)
    ends = np.append(starts[1:], len(buffer))
    long_enough = ends - starts > width
    head = buffer[np.minimum(starts.astype(np.int32)[:, None] + np.arange(width, dtype=np.int32), len(buffer) - 1)]
    prefix = np.all(head[:, : len(LINE_PREFIX)] == np.frombuffer(LINE_PREFIX, np.uint8), axis=1)
    hex_digits = np.all(_NIBBLE[head[:, len(LINE_PREFIX): -1]] < 16, axis=1)
    return long_enough & prefix & hex_digits & (head[:, -1] == ord('"'))


def _hex_codes(lines: bytes, starts: np.ndarray) -> np.ndarray:
    """The codes of the keys at `starts` (lines already checked by _well_placed_keys)."""
    buffer = np.frombuffer(lines, np.uint8)
    nibbles = _NIBBLE[buffer[starts.astype(np.int32)[:, None] + np.arange(len(LINE_PREFIX), len(LINE_PREFIX) + 16, dtype=np.int32)]].astype(np.uint64)
    return np.bitwise_or.reduce(nibbles << _SHIFTS, axis=1) if len(starts) else np.zeros(0, np.uint64)


class DigestTable:
    """16-byte digests -> a 64-bit number each (where it was first seen), in numpy open-addressing
    tables: 25 bytes a slot, at most half full, so about 50 bytes an entry where a Python dict of
    tuples and strings took about 300 (read_pairs' duplicate checks: ~100 MB at 2M pairs, not 600).
    About a microsecond an operation from Python."""

    def __init__(self, capacity: int = 1 << 12):
        self._used = np.zeros(capacity, bool)
        self._high, self._low, self._value = (np.zeros(capacity, np.uint64) for _ in range(3))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def get(self, digest: bytes) -> int | None:
        """The number stored under `digest`, or None."""
        high, low = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big")
        mask = len(self._used) - 1
        slot = high & mask
        while self._used[slot]:
            if int(self._high[slot]) == high and int(self._low[slot]) == low:
                return int(self._value[slot])
            slot = (slot + 1) & mask
        return None

    def add(self, digest: bytes, value: int) -> None:
        """Store `value` under `digest` (not there yet: get() it first)."""
        self._insert(int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big"), value)
        if 2 * self._count > len(self._used):
            self._grow()

    def _grow(self) -> None:
        """Twice the slots, the entries rehashed in numpy, GROW_CHUNK old slots at a time (no Python
        object an entry: temporaries of ~50 bytes an entry of one chunk beside the new arrays)."""
        used, high, low, value = self._used, self._high, self._low, self._value
        self._used = np.zeros(2 * len(used), bool)
        self._high, self._low, self._value = (np.zeros(2 * len(used), np.uint64) for _ in range(3))
        for start in range(0, len(used), GROW_CHUNK):
            part = slice(start, start + GROW_CHUNK)
            kept = used[part]
            self._place(high[part][kept], low[part][kept], value[part][kept])

    def _place(self, high: np.ndarray, low: np.ndarray, value: np.ndarray) -> None:
        """Store new entries at once: each round places, of the entries still waiting, one per free
        slot they probe, and moves the others on one slot, so every entry ends in an unbroken run of
        used slots from its home (what get() probes), as _insert leaves it."""
        mask = np.uint64(len(self._used) - 1)
        waiting, slot = np.arange(len(high)), high & mask
        while len(waiting):
            placed = np.zeros(len(slot), bool)
            placed[np.unique(slot, return_index=True)[1]] = True  # one entry per slot probed this round
            placed &= ~self._used[slot]
            chosen, at = waiting[placed], slot[placed]
            self._used[at] = True
            self._high[at], self._low[at], self._value[at] = high[chosen], low[chosen], value[chosen]
            waiting, slot = waiting[~placed], (slot[~placed] + np.uint64(1)) & mask

    def _insert(self, high: int, low: int, value: int) -> None:
        mask = len(self._used) - 1
        slot = high & mask
        while self._used[slot]:
            slot = (slot + 1) & mask
        self._used[slot] = True
        self._high[slot], self._low[slot], self._value[slot] = high, low, value
        self._count += 1
