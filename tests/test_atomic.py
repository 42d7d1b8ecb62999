"""Concurrent writers of one output: every write goes through teachfit.atomic.atomic_write (a
unique temporary name, then an atomic rename), so processes writing the same table all succeed
and the file is always one writer's whole table (a shared temporary name failed 5 and 9 of 18
concurrent `select` runs)."""
import subprocess
import sys
import textwrap
import time

import pytest

from teachfit.files import read_table

WRITERS, ROWS, ROUNDS = 12, 200, 4

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from teachfit.files import write_table
    out, start, writer = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    deadline = time.monotonic() + 60
    while not start.exists():  # every writer imported and waiting: then all write at once
        if time.monotonic() > deadline:
            sys.exit("never started")
        time.sleep(0.005)
    rows = [{"writer": writer, "row": i, "text": f"writer {writer} row {i} " * 20} for i in range(ROWS)]
    for _ in range(ROUNDS):
        write_table(out, rows, {"writer": writer})
    print("ok", writer)
""").replace("ROWS", str(ROWS)).replace("ROUNDS", str(ROUNDS))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_concurrent_write_table_processes_all_succeed_and_leave_one_whole_table(tmp_path, suffix):
    out, start = tmp_path / f"selection{suffix}", tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(start), str(w)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(WRITERS)]
    try:
        time.sleep(0.5)
        start.touch()
        results = [p.communicate(timeout=90) + (p.returncode,) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [(w, rc, err[-500:]) for w, (_, err, rc) in enumerate(results) if rc != 0]
    assert not failed, f"{len(failed)} of {WRITERS} concurrent writers failed: {failed[:2]}"
    rows, metadata = read_table(out)
    assert len(rows) == ROWS
    writers = {r["writer"] for r in rows}
    assert len(writers) == 1, f"rows of several writers in one file: {sorted(writers)}"
    (writer,) = writers
    assert [r["row"] for r in rows] == list(range(ROWS))
    assert all(r["text"] == f"writer {writer} row {r['row']} " * 20 for r in rows)
    if suffix == ".parquet":  # the metadata travels inside the file: the same writer's
        assert metadata == {"writer": writer}
    else:
        assert metadata.get("writer") in range(WRITERS)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert not leftovers, f"temporary files left behind: {leftovers}"
