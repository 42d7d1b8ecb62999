"""distilabel's layout (`instruction`, `generations`, `model_names`, `ratings`) and nested reward
columns (`annotations.helpfulness.Rating`), through the one reader and through `teachfit score`."""
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from teachfit.files import read_pairs, read_table
from teachfit.records import InputError, ReadStats, instruction_id

CLI = [sys.executable, "-m", "teachfit.cli"]
MODELS = ["gpt-4o-mini", "Llama-3.1-8B-Instruct", "Qwen2.5-7B-Instruct"]
QUESTIONS = ["Write a short poem about the sea.", "Explain recursion to a child.", "What is 2 + 2?",
             "List three fruits."]


def distilabel_records():
    """distilabel rows (GroupColumns + UltraFeedback task): one row per instruction, lists per generation."""
    return [{"instruction": question, "generations": [f"{m} answers: {question.lower()} " + "in detail " * k
                                                      for k, m in enumerate(MODELS)],
             "model_names": list(MODELS), "ratings": [float((i + 2 * k) % 5) + 1.0 for k in range(len(MODELS))],
             "model_name": "gpt-4o"} for i, question in enumerate(QUESTIONS)]


def write(path, records):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def independent_read(path):
    """{(instruction id, teacher): (instruction, response, rating)} read straight from the file."""
    rows = pq.read_table(path).to_pylist() if path.suffix == ".parquet" else [
        json.loads(line) for line in path.read_text().splitlines()]
    return {(instruction_id(r["instruction"]), m): (r["instruction"], g, rating)
            for r in rows for g, m, rating in zip(r["generations"], r["model_names"], r["ratings"])}


def run(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_distilabel_rows_give_one_pair_per_generation(tmp_path, suffix):
    path = write(tmp_path / f"dl{suffix}", distilabel_records())
    expected = independent_read(path)
    pairs = list(read_pairs([path], reward_column="rating"))
    assert len(pairs) == len(QUESTIONS) * len(MODELS) == len(expected)
    for pair in pairs:
        instruction, response, rating = expected[(pair.id, pair.teacher)]
        assert (pair.instruction, pair.response) == (instruction, response)
        assert pair.extra["reward"] == pair.extra["rating"] == rating
        assert pair.extra["model_name"] == "gpt-4o"  # a row's scalar field travels with each pair
        assert not {"generations", "model_names", "ratings"} & set(pair.extra)
    assert {p.teacher for p in pairs} == set(MODELS)


def test_distilabel_ratings_are_optional_and_repeated_models_are_samples(tmp_path):
    records = distilabel_records()
    for record in records:
        del record["ratings"]
    records[0]["model_names"] = ["gpt-4o-mini", "gpt-4o-mini", "Qwen2.5-7B-Instruct"]  # num_generations=2
    pairs = list(read_pairs([write(tmp_path / "dl.jsonl", records)]))
    assert len(pairs) == 12 and all("rating" not in p.extra for p in pairs)
    base = instruction_id(QUESTIONS[0])
    assert [(p.id, p.teacher) for p in pairs[:3]] == [
        (f"{base}#s0", "gpt-4o-mini"), (f"{base}#s1", "gpt-4o-mini"), (base, "Qwen2.5-7B-Instruct")]
    assert pairs[0].extra["instruction_id"] == base
    with pytest.raises(InputError, match="missing field: reward column 'rating'"):
        list(read_pairs([tmp_path / "dl.jsonl"], reward_column="rating"))


def bad_records():
    records = distilabel_records()
    records[0]["model_names"] = MODELS[:2]  # lists of different lengths
    records[1]["generations"][1] = 42  # a generation that is not a string
    records[2]["model_names"][2] = None  # a missing model name
    records[3]["ratings"] = [5.0]  # ratings of another length
    return records


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_distilabel_bad_shapes_are_skipped_rows_at_file_line(tmp_path, suffix):
    records = bad_records()
    if suffix == ".parquet":
        records[1]["generations"][1] = None  # Parquet lists hold one type: a null generation
    path = write(tmp_path / f"dl{suffix}", records)
    with pytest.raises(InputError, match=rf"dl\{suffix}:1: wrong shape: 3 generations but 2 model_names"):
        list(read_pairs([path]))
    stats = ReadStats()
    pairs = list(read_pairs([path], skip_invalid=True, stats=stats))
    reasons = [(row["line"], row["reason"]) for row in stats.skipped]
    kind = "is null" if suffix == ".parquet" else "is a int"
    assert reasons == [
        (1, "wrong shape: 3 generations but 2 model_names (the lists must be the same length)"),
        (2, f"wrong type: generation 2 (model '{MODELS[1]}') {kind}, not a string"),
        (3, "missing field: generation 3 has no model name in 'model_names'"),
        (4, "wrong shape: 3 generations but 1 ratings (the lists must be the same length)")]
    assert [(p.id, p.teacher) for p in pairs] == [
        (instruction_id(QUESTIONS[1]), MODELS[0]), (instruction_id(QUESTIONS[1]), MODELS[2]),
        (instruction_id(QUESTIONS[2]), MODELS[0]), (instruction_id(QUESTIONS[2]), MODELS[1])]


def test_distilabel_without_model_names_is_a_bad_row(tmp_path):
    records = distilabel_records()
    del records[0]["model_names"]
    with pytest.raises(InputError, match="dl.jsonl:1: missing field: 'model_names'"):
        list(read_pairs([write(tmp_path / "dl.jsonl", records)]))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_score_cli_reads_distilabel_files(tmp_path, tiny_llama, suffix):
    path = write(tmp_path / f"dl{suffix}", distilabel_records())
    out = tmp_path / "s.parquet"
    done = run("score", path, "--student", f"hf:{tiny_llama}", "--reward-column", "rating", "--metrics",
               "car,length", "--dtype", "float32", "--no-progress", "--out", out)
    assert done.returncode == 0, done.stderr
    rows, _ = read_table(out)
    expected = independent_read(path)
    assert len(rows) == len(expected)
    for row in rows:
        instruction, response, rating = expected[(row["id"], row["teacher"])]
        assert row["reward"] == rating and row["length"] > 0
    assert {r["teacher"] for r in rows} == set(MODELS)


def test_score_cli_skips_bad_distilabel_rows_or_exits_2(tmp_path, tiny_llama):
    path = write(tmp_path / "dl.jsonl", bad_records())
    common = ["--student", f"hf:{tiny_llama}", "--reward-column", "rating", "--metrics", "car,length",
              "--dtype", "float32", "--no-progress"]
    done = run("score", path, *common, "--out", tmp_path / "strict.parquet")
    assert done.returncode == 2 and "dl.jsonl:1: wrong shape" in done.stderr and "Traceback" not in done.stderr
    done = run("score", path, *common, "--skip-invalid", "--out", tmp_path / "s.parquet")
    assert done.returncode == 0, done.stderr
    assert "4 skipped" in done.stdout + done.stderr
    rows, meta = read_table(tmp_path / "s.parquet")
    assert len(rows) == 4 and [r["line"] for r in meta["skipped"]] == [1, 2, 3, 4]
    assert f"model '{MODELS[1]}'" in meta["skipped"][1]["reason"]


# --- a nested or dotted reward column ---
def plain(reward_fields, **more):
    return {"instruction": "Explain recursion.", "response": f"A function that calls itself ({more}).",
            **reward_fields, **more}


def test_a_rating_stored_as_text_is_a_number(tmp_path):
    """UltraFeedback keeps its annotation ratings as strings ("4"): they are read as numbers."""
    path = write(tmp_path / "text.jsonl", [plain({"annotations": {"helpfulness": {"Rating": " 4"}}}, id="a")])
    assert [p.extra["reward"] for p in read_pairs([path], reward_column="annotations.helpfulness.Rating")] == [4.0]


def test_a_dotted_reward_column_reads_a_nested_field(tmp_path):
    records = [plain({"annotations": {"helpfulness": {"Rating": 4.5}}}, id="a"),
               plain({"annotations": {"helpfulness": {"Rating": 2}}, "annotations.helpfulness.Rating": 9.0}, id="b"),
               plain({"scores": {"judge.v2": {"overall": 3.0}}}, id="c")]
    path = write(tmp_path / "nested.jsonl", records[:2])
    pairs = list(read_pairs([path], reward_column="annotations.helpfulness.Rating"))
    assert [p.extra["reward"] for p in pairs] == [4.5, 9.0]  # a key holding the dots literally wins
    path = write(tmp_path / "dotted_key.jsonl", records[2:])
    assert [p.extra["reward"] for p in read_pairs([path], reward_column="scores.judge.v2.overall")] == [3.0]


@pytest.mark.parametrize("value, reason", [
    ({"annotations": {"helpfulness": {"Rating": "N/A"}}}, "reward column 'annotations.helpfulness.Rating' holds 'N/A', not a number"),
    ({"annotations": {"helpfulness": {"Rating": [8.5, 7.0]}}}, "holds '[8.5, 7.0]', not a number"),
    ({"annotations": {"helpfulness": {"Rationale": "ok"}}},
     "missing field: reward column 'annotations.helpfulness.Rating' ('annotations.helpfulness' has no 'Rating'; "
     "keys there: Rationale)"),
    ({"annotations": {"helpfulness": [4.0]}},
     "missing field: reward column 'annotations.helpfulness.Rating' ('annotations.helpfulness' holds a list, not an object)"),
    ({"other": 1.0}, "missing field: reward column 'annotations.helpfulness.Rating' (columns here: other)"),
])
def test_a_dotted_reward_column_that_cannot_be_read_is_a_bad_row(tmp_path, value, reason):
    path = write(tmp_path / "nested.jsonl", [plain(value)])
    with pytest.raises(InputError) as error:
        list(read_pairs([path], reward_column="annotations.helpfulness.Rating"))
    assert reason in str(error.value) and str(error.value).startswith(f"{path}:1: ")


def ultrafeedback_records():
    """UltraFeedback-style rows whose ratings sit in each completion's annotations."""
    return [{"source": "evol", "instruction": question, "completions": [
        {"model": model, "response": f"{model} says: {question}", "overall_score": 5.0,
         "annotations": {"helpfulness": {"Rating": float((i + m) % 5) + 1.0, "Rationale": "fine"},
                         "honesty": {"Rating": 3.0, "Rationale": "ok"}}}
        for m, model in enumerate(MODELS)]} for i, question in enumerate(QUESTIONS)]


def test_a_dotted_reward_column_reads_ultrafeedback_annotations(tmp_path, tiny_llama):
    path = write(tmp_path / "uf.parquet", ultrafeedback_records())
    expected = {(instruction_id(r["instruction"]), c["model"]): c["annotations"]["helpfulness"]["Rating"]
                for r in pq.read_table(path).to_pylist() for c in r["completions"]}
    pairs = list(read_pairs([path], reward_column="annotations.helpfulness.Rating"))
    assert {(p.id, p.teacher): p.extra["reward"] for p in pairs} == expected
    assert "annotations" not in pairs[0].extra  # only the resolved field travels, not the struct
    out = tmp_path / "s.parquet"
    done = run("score", path, "--student", f"hf:{tiny_llama}", "--reward-column", "annotations.helpfulness.Rating",
               "--metrics", "car,length", "--dtype", "float32", "--no-progress", "--out", out)
    assert done.returncode == 0, done.stderr
    rows, _ = read_table(out)
    assert {(r["id"], r["teacher"]): r["reward"] for r in rows} == expected
    done = run("score", path, "--student", f"hf:{tiny_llama}", "--reward-column", "annotations.truthfulness.Rating",
               "--metrics", "car", "--dtype", "float32", "--no-progress", "--out", tmp_path / "t.parquet")
    assert done.returncode == 2 and "uf.parquet:1: missing field: reward column 'annotations.truthfulness.Rating'" \
        in done.stderr, done.stderr
