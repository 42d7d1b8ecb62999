"""Peak memory reading a `datasets` input of many rows (issue 22): each way in a fresh process,
after `import datasets, pyarrow, teachfit.files`, the peak RSS while reading (Linux VmHWM, reset
after the imports; it counts the pages of a memory-mapped Arrow file), the peak anonymous RSS
(the heap, sampled every 10 ms) and seconds, for read_pairs over every row.

  .venv/bin/python bench/read_datasets.py --rows 200000

Ways: a save_to_disk folder by its path and as hf-dataset:<folder> (load_from_disk, memory-mapped,
an Arrow batch at a time); hf-dataset:<file.jsonl> (load_dataset(json, data_files), streaming);
the same rows as plain JSONL (teachfit's own line reader); the hand-written Arrow stream reader
teachfit had before (state.json + pa.ipc, batch by batch); and, for contrast, the whole set as
Python objects at once (Dataset.to_list()), which teachfit never does. `import` alone is the floor.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WAYS = {
    "imports only (the floor)": "n = 0",
    "save_to_disk folder by path (load_from_disk)":
        "from teachfit.files import expand_inputs, read_pairs; n = sum(1 for _ in read_pairs(expand_inputs([FOLDER])))",
    "hf-dataset:<folder> (load_from_disk)":
        "from teachfit.files import expand_inputs, read_pairs; "
        "n = sum(1 for _ in read_pairs(expand_inputs(['hf-dataset:' + FOLDER])))",
    "hf-dataset:<file.jsonl> (load_dataset, streaming)":
        "from teachfit.files import expand_inputs, read_pairs; "
        "n = sum(1 for _ in read_pairs(expand_inputs(['hf-dataset:' + JSONL])))",
    "plain JSONL (teachfit's line reader)":
        "from teachfit.files import expand_inputs, read_pairs; n = sum(1 for _ in read_pairs(expand_inputs([JSONL])))",
    "before: hand-written state.json + Arrow stream reader": """
import json, pyarrow as pa
from pathlib import Path
from teachfit import hub_datasets
from teachfit.files import expand_inputs
def records(folder):  # teachfit's reader until this change (files._saved_dataset_records)
    state = json.loads((folder / 'state.json').read_text())
    row = 0
    for entry in state.get('_data_files', []):
        with pa.memory_map(str(folder / entry['filename'])) as source:
            for batch in pa.ipc.open_stream(source):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record
hub_datasets.saved_records = records
n = sum(1 for _ in read_pairs(expand_inputs([FOLDER])))""",
    "contrast: Dataset.to_list() of the whole set":
        "import datasets; rows = datasets.load_from_disk(FOLDER).to_list(); n = len(rows)",
}

MEASURE = """
import sys, time
import datasets, pyarrow
from teachfit.files import read_pairs
def status(key):  # MB
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) / 1024
FOLDER, JSONL = sys.argv[1], sys.argv[2]
import threading
peak_anon = [status('RssAnon')]
def sample():  # the heap's peak: anonymous memory, not the memory-mapped Arrow file's pages
    while True:
        peak_anon[0] = max(peak_anon[0], status('RssAnon'))
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
with open('/proc/self/clear_refs', 'w') as handle:
    handle.write('5')  # the peak (VmHWM) starts again from here: reading only, not the imports
start_rss, start = status('VmRSS'), time.perf_counter()
{code}
seconds = time.perf_counter() - start
print(n, start_rss, status('VmHWM'), peak_anon[0], seconds)
"""


def make_inputs(folder: Path, rows: int) -> tuple[Path, Path]:
    """`rows` instruction/response pairs (~1 KB each) as a save_to_disk folder and a JSONL file."""
    import datasets

    def generate():
        for i in range(rows):
            yield {"id": f"p{i}", "teacher": "t", "instruction": f"Question {i}: " + "why " * 40,
                   "response": f"Answer {i}: " + "because " * 100}

    saved, jsonl = folder / "saved", folder / "pairs.jsonl"
    datasets.Dataset.from_generator(generate).save_to_disk(str(saved))
    with jsonl.open("w") as handle:
        for record in generate():
            handle.write(json.dumps(record) + "\n")
    return saved, jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        saved, jsonl = make_inputs(Path(tmp), args.rows)
        env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(Path(tmp) / "hf_home")}
        print(f"| way ({args.rows:,} rows, {jsonl.stat().st_size / 1e6:.0f} MB as JSONL) | rows read "
              "| RSS before reading | peak RSS while reading | peak anonymous RSS | seconds |")
        print("|---|---|---|---|---|---|")
        for name, code in WAYS.items():
            done = subprocess.run([sys.executable, "-c", MEASURE.format(code=code), str(saved), str(jsonl)],
                                  capture_output=True, text=True, env={**__import__("os").environ, **env})
            if done.returncode:
                print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1]} | | | | |")
                continue
            count, before, peak, anon, seconds = done.stdout.split()[-5:]
            print(f"| {name} | {int(count):,} | {float(before):.0f} MB | {float(peak):.0f} MB | {float(anon):.0f} MB "
                  f"| {float(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
