"""Inputs through the `datasets` library: `hf-dataset:<hub id or path>[:split]` and save_to_disk
folders (load_from_disk), local JSONL/Parquet through load_dataset(data_files), the hub offline
(one line, exit 2, never the network), the pipeline noticing a changed dataset, and score, rank,
select and generate taking the spelling on the command line."""
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PAIRS, write_pairs
from teachfit import hub_datasets
from teachfit.files import count_records, expand_inputs, read_pairs, read_records, read_table
from teachfit.instructions import read_instructions
from teachfit.records import InputError

datasets = pytest.importorskip("datasets")

CLI = [sys.executable, "-m", "teachfit.cli"]
HUB_ID = "Magpie-Align/Magpie-100K-Generator-Zoo"
ROWS = [{"id": f"p{i}", "instruction": f"Question number {i}?", "response": f"Answer {i}.", "n": i} for i in range(7)]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Never the network, and `datasets`' caches inside the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def cli_env(tmp_path):
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))


def run(tmp_path, *args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, env=cli_env(tmp_path))


def test_save_to_disk_folder_with_the_spelling_and_by_its_path(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    spec = f"hf-dataset:{tmp_path / 'saved'}"
    expected = [(r["id"], r["instruction"], r["response"], r["n"]) for r in ROWS]
    for inputs in ([spec], [tmp_path / "saved"]):
        paths = expand_inputs(inputs)
        assert [(p.id, p.instruction, p.response, p.extra["n"]) for p in read_pairs(paths)] == expected
        assert count_records(paths) == len(ROWS)
    pairs = list(read_pairs(expand_inputs([spec])))
    assert {p.teacher for p in pairs} == {"saved"}  # the folder's name, as a file's stem would be
    assert pairs[2].source == f"{spec}:row 3"
    assert [n for n, _ in read_records(spec)] == list(range(1, len(ROWS) + 1))


def test_dataset_dict_splits(tmp_path):
    folder = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:3]),
                          "test": datasets.Dataset.from_list(ROWS[3:])}).save_to_disk(str(folder))
    ids = lambda inputs: [p.id for p in read_pairs(expand_inputs(inputs))]
    assert ids([f"hf-dataset:{folder}"]) == ["p0", "p1", "p2"]  # the default split: train
    assert ids([f"hf-dataset:{folder}:test"]) == ["p3", "p4", "p5", "p6"]
    assert sorted(ids([folder])) == [r["id"] for r in ROWS]  # the bare folder: every split
    with pytest.raises(InputError, match=r"^hf-dataset:.*dict:validation: no split 'validation' \(splits: train, test\)$"):
        expand_inputs([f"hf-dataset:{folder}:validation"])
    from teachfit.hub_datasets import count_rows

    assert count_rows(folder) == len(ROWS)  # the rows of every split, not the number of splits
    assert count_rows(f"hf-dataset:{folder}:test") == 4


def test_a_bad_row_is_named_by_its_row(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[4]["response"] = "   "
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    spec = f"hf-dataset:{tmp_path / 'bad'}"
    with pytest.raises(InputError, match=rf"^{spec}:row 5: empty response$"):
        list(read_pairs(expand_inputs([spec])))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_local_files_through_load_dataset(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"alpha{suffix}"
    if suffix == ".jsonl":
        write_pairs(path, ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    monkeypatch.chdir(tmp_path)  # a relative path is made absolute, so that select can read it again elsewhere
    paths = expand_inputs([f"hf-dataset:./{path.name}"])
    assert [str(p) for p in paths] == [f"hf-dataset:{path}"]
    pairs = list(read_pairs(paths))
    assert [(p.id, p.teacher, p.response) for p in pairs] == [(r["id"], "alpha", r["response"]) for r in ROWS]
    assert count_records(paths) == len(ROWS)
    with pytest.raises(InputError, match=r"no split 'test' \(splits: train\)"):
        expand_inputs([f"hf-dataset:{path}:test"])


def test_a_hub_style_folder_goes_through_the_hub_ids_call(tmp_path):
    """A folder of data/<split>-*.parquet is opened as a hub id is (load_dataset(path, split, streaming))."""
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table.slice(0, 4), folder / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(4), folder / "train-00001-of-00002.parquet")
    pq.write_table(table.slice(0, 2), folder / "test-00000-of-00001.parquet")
    spec = f"hf-dataset:{tmp_path / 'repo'}"
    assert [p.id for p in read_pairs(expand_inputs([spec]))] == [r["id"] for r in ROWS]
    assert [p.id for p in read_pairs(expand_inputs([spec + ":test"]))] == ["p0", "p1"]
    assert isinstance(hub_datasets.open_split(hub_datasets.parse(spec)), datasets.IterableDataset)  # streamed


def test_a_hub_id_up_to_the_call(tmp_path, monkeypatch):
    """What a hub id asks of `datasets` (the hub itself is never reached in tests): the id, the
    split, streaming=True; its rows read as any input's; its digest follows the hub revision."""
    calls = []

    def load_dataset(path, **options):
        calls.append((path, options))
        return datasets.IterableDataset.from_generator(lambda: iter(ROWS[:3]))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    spec = f"hf-dataset:{HUB_ID}:test"
    assert [(p.id, p.teacher, p.source) for p in read_pairs(expand_inputs([spec]))] == \
        [(r["id"], "Magpie-100K-Generator-Zoo", f"{spec}:row {n}") for n, r in enumerate(ROWS[:3], start=1)]
    assert calls[0] == (HUB_ID, {"split": "test", "streaming": True})
    assert expand_inputs([f"hf-dataset:{HUB_ID}"]) and calls[-1] == (HUB_ID, {"split": "train", "streaming": True})
    revision = {"hash": "sha-1"}
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda path: type("B", (), {"hash": revision["hash"]}))
    before = hub_datasets.digest(spec)
    assert hub_datasets.digest(spec) == before
    revision["hash"] = "sha-2"
    assert hub_datasets.digest(spec) != before


def test_rows_are_read_a_batch_at_a_time(tmp_path):
    """Reading every row keeps about one Arrow batch of Python records alive, not the dataset."""
    import tracemalloc

    rows = [{"instruction": f"Question {i}? " + "x" * 200, "response": f"Answer {i}. " + "y" * 200} for i in range(20_000)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "big"))
    del rows
    loaded = datasets.load_from_disk(str(tmp_path / "big"))
    tracemalloc.start()
    whole = loaded.to_list()  # the reference: every row as Python objects at once
    everything = tracemalloc.get_traced_memory()[1]
    del whole
    tracemalloc.reset_peak()
    count = sum(1 for _ in read_records(f"hf-dataset:{tmp_path / 'big'}"))
    streamed = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 20_000
    assert streamed < everything / 5, (streamed, everything)


def test_a_hub_id_offline_is_one_line(tmp_path):
    with pytest.raises(InputError) as error:
        expand_inputs([f"hf-dataset:{HUB_ID}:train"])
    message = str(error.value)
    assert message == (f"hf-dataset:{HUB_ID}:train: the Hugging Face hub could not be reached "
                       "(HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)")
    with pytest.raises(InputError, match="could not be reached"):
        read_instructions([f"hf-dataset:{HUB_ID}"])
    for bad, reason in ((f"hf-dataset:./nowhere", "file not found"), ("hf-dataset:", "no dataset named"),
                        ("hf-dataset:not an id", "neither a local path nor a hub dataset id")):
        with pytest.raises(InputError, match=reason):
            expand_inputs([bad])
    result = run(tmp_path, "score", f"hf-dataset:{HUB_ID}", "--student", "hf:nowhere", "--out", tmp_path / "s.parquet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: hf-dataset:{HUB_ID}: the Hugging Face hub could not be reached "
                     "(HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)"], result.stderr


def test_the_pipeline_digest_follows_the_dataset(tmp_path):
    from teachfit.run import file_digest

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    spec = f"hf-dataset:{folder}"
    first = file_digest([spec]), file_digest([folder])
    assert (file_digest([spec]), file_digest([folder])) == first  # the same rows: the same digest
    changed = [dict(r, response=r["response"] + "!") if r["id"] == "p3" else r for r in ROWS]
    datasets.Dataset.from_list(changed).save_to_disk(str(tmp_path / "next"))
    os.replace(folder, tmp_path / "old")
    os.replace(tmp_path / "next", folder)
    assert file_digest([spec]) != first[0] and file_digest([folder]) != first[1]
    with pytest.raises(InputError, match="could not be reached"):
        file_digest([f"hf-dataset:{HUB_ID}"])


def test_a_study_resolves_a_relative_local_dataset_and_leaves_a_hub_id(tmp_path):
    from teachfit.experiment import load_experiment

    (tmp_path / "sub" / "data").mkdir(parents=True)
    write_pairs(tmp_path / "sub" / "data" / "i.jsonl", ROWS)
    study = tmp_path / "sub" / "study.yaml"
    study.write_text("generate:\n  instructions: [hf-dataset:data/i.jsonl, 'hf-dataset:./data/i.jsonl:train',\n"
                     f"                 'hf-dataset:{HUB_ID}:test']\n  teacher: [packaged:smollm2-135m-instruct]\n")
    local = f"hf-dataset:{tmp_path / 'sub' / 'data' / 'i.jsonl'}"
    assert load_experiment(study).stages["generate"].instructions == [local, local + ":train", f"hf-dataset:{HUB_ID}:test"]
    study.write_text(f"responses:\n  - given.jsonl\n  - hf-dataset:{HUB_ID}\n")
    with pytest.raises(InputError, match=r"study.yaml:3: a study's responses are files"):
        load_experiment(study)


def test_score_rank_and_select_take_the_spelling(tmp_path, tiny_llama):
    alpha = [dict(p, teacher="alpha", r=float(i)) for i, p in enumerate(PAIRS)]
    beta = [dict(p, teacher="beta", response=p["response"] + " Thanks!", r=float(3 - i)) for i, p in enumerate(PAIRS)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(alpha),
                          "test": datasets.Dataset.from_list(beta)}).save_to_disk(str(tmp_path / "zoo"))
    parquet = tmp_path / "beta.parquet"
    pq.write_table(pa.Table.from_pylist(beta), parquet)
    scores = tmp_path / "s.parquet"
    result = run(tmp_path, "score", f"hf-dataset:{tmp_path / 'zoo'}", f"hf-dataset:{parquet}",
                 "--student", f"hf:{tiny_llama}", "--reward-column", "r", "--metrics", "car",
                 "--dtype", "float32", "--out", scores, "--no-progress")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(scores).to_pylist()
    assert sorted((r["teacher"], r["reward"]) for r in table) == sorted(
        [("alpha", float(i)) for i in range(4)] + [("beta", float(3 - i)) for i in range(4)])
    meta = read_table(scores)[1]
    assert meta["inputs"] == [f"hf-dataset:{tmp_path / 'zoo'}", f"hf-dataset:{parquet}"]
    result = run(tmp_path, "rank", scores, "--json")
    assert result.returncode == 0, result.stderr
    assert {t["teacher"] for t in json.loads(result.stdout)["teachers"]} == {"alpha", "beta"}
    out = tmp_path / "train.jsonl"
    result = run(tmp_path, "select", scores, "--by", "reward", "--out", out, "--format", "alpaca")
    assert result.returncode == 0, result.stderr
    chosen = {c["instruction"]: (c["teacher"], c["output"]) for c in map(json.loads, out.read_text().splitlines())}
    best = {}  # the higher reward of the two answers, from the rows written above
    for row in alpha + beta:
        if row["instruction"] not in best or row["r"] > best[row["instruction"]]["r"]:
            best[row["instruction"]] = row
    assert chosen == {q: (r["teacher"], r["response"]) for q, r in best.items()}


def test_generate_reads_instructions_from_a_dataset(tmp_path, tiny_chatml):
    questions = [{"id": f"q{i}", "instruction": f"Question {i}?"} for i in range(3)]
    datasets.Dataset.from_list(questions).save_to_disk(str(tmp_path / "instr"))
    spec = f"hf-dataset:{tmp_path / 'instr'}"
    assert [(i.id, i.text, i.source) for i in read_instructions([spec])] == \
        [(q["id"], q["instruction"], f"{spec}:row {n}") for n, q in enumerate(questions, start=1)]
    result = run(tmp_path, "generate", "--instructions", spec, "--teacher", f"hf:{tiny_chatml}?name=tiny",
                 "--max-new-tokens", "3", "--dtype", "float32", "--out", tmp_path / "run", "--no-progress")
    assert result.returncode == 0, result.stderr
    answered = [json.loads(line) for line in (tmp_path / "run" / "responses" / "tiny.jsonl").open()]
    assert sorted(r["id"] for r in answered) == ["q0", "q1", "q2"]
    assert {r["instruction"] for r in answered} == {q["instruction"] for q in questions}
