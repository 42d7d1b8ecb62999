"""Multi-teacher datasets as input: Generator-Zoo and UltraFeedback layouts, `datasets` folders,
rewards taken from a column; scored, ranked and selected, CAR checked by hand."""
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from teachfit.files import expand_inputs, read_pairs
from teachfit.records import InputError, ReadStats, instruction_id
from teachfit.score.reward import FileRewardScorer
from teachfit.rank import rank_teachers
from teachfit.config import ScoreConfig as ScoreOptions
from teachfit.score.engine import score_pairs
from teachfit.score.lm import LengthScorer, LMScorer
from teachfit.select import select_pairs

SKY, ARMO = "Skywork-Reward-Llama-3.1-8B", "ArmoRM-Llama3-8B-v0.1"
GENERATORS = ["Llama-3.1-8B-Instruct", "Qwen2.5-7B-Instruct", "gemma-2-9b-it"]
QUESTIONS = ["Write a short poem about the sea.", "Explain recursion to a child.", "What is 2 + 2?",
             "List three fruits.", "Give me advice on learning to code."]


def zoo_records():
    """Generator-Zoo wide rows; gemma did not answer the third instruction."""
    records = []
    for i, question in enumerate(QUESTIONS):
        record = {"uuid": f"u{i}", "instruction": question, "task_category": "Math" if i == 2 else "Other"}
        for g, generator in enumerate(GENERATORS):
            answered = not (i == 2 and generator == "gemma-2-9b-it")
            record[generator] = {"content": f"{generator} answers {question.lower()} " + "in detail " * g,
                                 SKY: float((3 * i + 5 * g) % 7) - 2.5, ARMO: 0.1 * (i + g)} if answered else None
        records.append(record)
    return records


def ultrafeedback_records():
    return [{"source": "evol", "instruction": question, "completions": [
        {"model": model, "response": f"{model} says: {question}", "overall_score": float((i + 2 * m) % 5) + 1.0,
         "fine-grained_score": 2.5 + m, "annotations": {"helpfulness": {"Rating": "4"}}}
        for m, model in enumerate(["gpt-4", "llama-2-7b-chat", "wizardlm-13b"])]} for i, question in enumerate(QUESTIONS)]


def test_zoo_rows_expand_into_one_pair_per_generator(tmp_path):
    pq.write_table(pa.Table.from_pylist(zoo_records()), tmp_path / "zoo.parquet")
    pairs = list(read_pairs([tmp_path / "zoo.parquet"], reward_column=SKY))
    assert len(pairs) == len(QUESTIONS) * len(GENERATORS) - 1
    expected = {(r["uuid"], g): r[g] for r in zoo_records() for g in GENERATORS if r[g] is not None}
    assert {(p.id, p.teacher) for p in pairs} == set(expected)
    for pair in pairs:
        struct = expected[(pair.id, pair.teacher)]
        assert pair.response == struct["content"]
        assert pair.extra["reward"] == struct[SKY] and pair.extra[ARMO] == pytest.approx(struct[ARMO])
        assert pair.extra["task_category"] in ("Math", "Other")
    with pytest.raises(InputError, match=f"reward column 'nope'.*{ARMO}, {SKY}"):
        list(read_pairs([tmp_path / "zoo.parquet"], reward_column="nope"))


def test_ultrafeedback_rows_and_a_missing_reward_skipped(tmp_path):
    records = ultrafeedback_records()
    del records[1]["completions"][2]["overall_score"]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "uf.parquet")
    with pytest.raises(InputError, match="uf.parquet:2: missing field: reward column 'overall_score'"):
        list(read_pairs([tmp_path / "uf.parquet"], reward_column="overall_score"))
    stats = ReadStats()
    pairs = list(read_pairs([tmp_path / "uf.parquet"], reward_column="overall_score", skip_invalid=True, stats=stats))
    assert len(pairs) == 14 and len(stats.skipped) == 1
    assert pairs[0].id == instruction_id(QUESTIONS[0]) and pairs[0].teacher == "gpt-4"
    assert pairs[0].extra["reward"] == 1.0 and pairs[0].extra["fine-grained_score"] == 2.5
    assert "annotations" not in pairs[0].extra  # only numeric fields travel


def test_saved_dataset_folders_and_parquet_folders_are_inputs(tmp_path):
    datasets = pytest.importorskip("datasets")
    reference = [(p.id, p.teacher, p.response, p.extra["reward"])
                 for p in read_pairs([_zoo_file(tmp_path)], reward_column=SKY)]
    datasets.Dataset.from_list(zoo_records()).save_to_disk(str(tmp_path / "saved"))
    got = [(p.id, p.teacher, p.response, p.extra["reward"])
           for p in read_pairs(expand_inputs([tmp_path / "saved"]), reward_column=SKY)]
    assert got == reference
    datasets.DatasetDict({"train": datasets.Dataset.from_list(zoo_records()[:2]),
                          "test": datasets.Dataset.from_list(zoo_records()[2:])}).save_to_disk(str(tmp_path / "dict"))
    both = list(read_pairs(expand_inputs([tmp_path / "dict"]), reward_column=SKY))
    assert sorted((p.id, p.teacher) for p in both) == sorted((r[0], r[1]) for r in reference)
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(zoo_records())
    pq.write_table(table.slice(0, 3), folder / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(3), folder / "train-00001-of-00002.parquet")
    hub = [(p.id, p.teacher) for p in read_pairs(expand_inputs([tmp_path / "hub"]), reward_column=SKY)]
    assert hub == [(r[0], r[1]) for r in reference]


def _zoo_file(tmp_path):
    path = tmp_path / "zoo.parquet"
    pq.write_table(pa.Table.from_pylist(zoo_records()), path)
    return path


@pytest.mark.parametrize("layout", ["zoo", "ultrafeedback"])
def test_score_with_file_reward_rank_and_select(tmp_path, tiny_llama, layout):
    from teachfit.models import load

    if layout == "zoo":
        path, column = _zoo_file(tmp_path), SKY
    else:
        path, column = tmp_path / "uf.parquet", "overall_score"
        pq.write_table(pa.Table.from_pylist(ultrafeedback_records()), path)
    pairs = list(read_pairs([path], reward_column=column))
    options = ScoreOptions(dtype="float32")
    student = LMScorer(load("causal_lm", f"hf:{tiny_llama}", dtype="float32"), "self", options)
    scorers = [student, FileRewardScorer(column, [path]), LengthScorer()]
    rows = list(score_pairs(pairs, scorers, tmp_path / "cache", options))
    assert len(rows) == len(pairs)

    # CAR by hand from the file's rewards (read with pyarrow here, not through teachfit) and the losses
    file_rewards = {}
    for record in pq.read_table(path).to_pylist():
        if layout == "zoo":
            for g in GENERATORS:
                if record[g] is not None:
                    file_rewards[(record["uuid"], g)] = record[g][SKY]
        else:
            for c in record["completions"]:
                file_rewards[(instruction_id(record["instruction"]), c["model"])] = c["overall_score"]
    loss = {(r["id"], r["teacher"]): r["loss_self"] for r in rows}
    assert {(r["id"], r["teacher"]): r["reward"] for r in rows} == file_rewards
    # gemma did not answer the third Zoo instruction: by default every teacher is compared on the
    # instructions all answered, and the ranking says what each lacks; or each on its own pairs
    shared = set.intersection(*({k[0] for k in file_rewards if k[1] == t} for t in {k[1] for k in file_rewards}))
    for shared_only in (True, False):
        ranking = rank_teachers(rows, beta=3.0, n_bootstrap=0, shared_only=shared_only)
        lacking = {"gemma-2-9b-it": 1} if layout == "zoo" else {}
        assert {t: n for t, n in ranking.settings["coverage"]["missing"].items() if n} == lacking
        for row in ranking.rows:
            keys = [k for k in file_rewards if k[1] == row["teacher"] and (k[0] in shared or not shared_only)]
            mean_reward = sum(file_rewards[k] for k in keys) / len(keys)
            mean_loss = sum(loss[k] for k in keys) / len(keys)
            assert row["n_pairs"] == len(keys)
            assert row["car"] == pytest.approx(mean_reward / (1 + 3.0 * mean_loss), rel=1e-9)
            assert math.isfinite(row["rsr_self"])

    # rescoring reads every value from the cache; a changed file is read again
    before = student.tokens_done
    assert list(score_pairs(pairs, scorers, tmp_path / "cache", options)) == rows
    assert student.tokens_done == before
    table = pq.read_table(path).to_pylist()
    for record in table:  # the same texts, every reward + 1
        for value in (record[g] for g in GENERATORS) if layout == "zoo" else record["completions"]:
            if value is not None:
                value[column] += 1.0
    pq.write_table(pa.Table.from_pylist(table), path)
    os.utime(path, ns=(10**18, 10**18))  # a different mtime even on a coarse clock
    changed = list(score_pairs(list(read_pairs([path], reward_column=column)),
                               [student, FileRewardScorer(column, [path]), LengthScorer()], tmp_path / "cache", options))
    assert [r["reward"] for r in changed] == [r["reward"] + 1.0 for r in rows]
    assert student.tokens_done == before  # the student's losses still came from the cache

    # select by the file's reward: per instruction the generator with the highest file reward
    selection = select_pairs(rows, "reward")
    for row in selection.rows:
        candidates = sorted((k[1], v) for k, v in file_rewards.items() if k[0] == row["instruction_id"])
        best = max(candidates, key=lambda c: c[1])  # max returns the first maximal: first teacher by name
        assert (row["teacher"], row["selection_score"]) == best


def test_file_reward_scorer_refuses_pairs_read_without_the_column(tmp_path):
    pairs = list(read_pairs([_zoo_file(tmp_path)]))
    with pytest.raises(InputError, match="reward_column="):
        FileRewardScorer(SKY).compute(pairs[:1])


# --- answers of a multi-teacher record that cannot be read: each one a skipped row (file:line and the
# generator's name in the reason), or an InputError without skip_invalid; never dropped in silence ---
def _jsonl(path, records):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _read(path, **options):
    stats = ReadStats()
    pairs = list(read_pairs([path], skip_invalid=True, stats=stats, **options))
    return pairs, stats


def test_a_zoo_generator_without_content_is_a_skipped_row(tmp_path):
    records = zoo_records()
    del records[1]["Qwen2.5-7B-Instruct"]["content"]  # the struct is there, its answer is not
    path = _jsonl(tmp_path / "zoo.jsonl", records)
    with pytest.raises(InputError, match=r"zoo\.jsonl:2: missing field: .*'Qwen2\.5-7B-Instruct'.*content"):
        list(read_pairs([path], reward_column=SKY))
    pairs, stats = _read(path, reward_column=SKY)
    assert len(pairs) == len(QUESTIONS) * len(GENERATORS) - 2
    assert ("u1", "Qwen2.5-7B-Instruct") not in {(p.id, p.teacher) for p in pairs}
    assert [(r["path"], r["line"]) for r in stats.skipped] == [(str(path), 2)]
    assert "Qwen2.5-7B-Instruct" in stats.skipped[0]["reason"]
    assert stats.counts == {"dropped_missing_field": 1}
    # in Parquet the struct's schema is the column's: the missing content is a null content
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "zoo.parquet")
    pairs, stats = _read(tmp_path / "zoo.parquet", reward_column=SKY)
    assert len(pairs) == len(QUESTIONS) * len(GENERATORS) - 2
    assert [(r["line"], "Qwen2.5-7B-Instruct" in r["reason"]) for r in stats.skipped] == [(2, True)]


@pytest.mark.parametrize("row", [0, 3])  # before (first row) or after the column was seen holding a struct
def test_a_zoo_generator_column_holding_a_string_is_a_skipped_row(tmp_path, row):
    records = zoo_records()
    records[row]["gemma-2-9b-it"] = "a bare answer, not a struct"
    path = _jsonl(tmp_path / "zoo.jsonl", records)
    with pytest.raises(InputError, match=rf"zoo\.jsonl:{row + 1}: wrong type: .*'gemma-2-9b-it'.*str"):
        list(read_pairs([path]))
    pairs, stats = _read(path)
    assert ("u%d" % row, "gemma-2-9b-it") not in {(p.id, p.teacher) for p in pairs}
    assert len(pairs) == len(QUESTIONS) * len(GENERATORS) - 2
    assert [(r["path"], r["line"]) for r in stats.skipped] == [(str(path), row + 1)]
    assert "gemma-2-9b-it" in stats.skipped[0]["reason"]
    if row:  # a column known to hold a generator is not taken for a shared column either
        assert all("a bare answer" not in str(p.extra) for p in pairs)


def test_a_zoo_row_whose_generators_all_hold_strings_names_each(tmp_path):
    records = zoo_records()
    for generator in GENERATORS:
        records[3][generator] = f"{generator} flat answer"
    pairs, stats = _read(_jsonl(tmp_path / "zoo.jsonl", records))
    assert len(pairs) == (len(QUESTIONS) - 1) * len(GENERATORS) - 1
    assert sorted(r["reason"].split("'")[1] for r in stats.skipped) == GENERATORS
    assert {r["line"] for r in stats.skipped} == {4}


def test_metadata_columns_of_a_zoo_file_are_not_generators(tmp_path):
    records = zoo_records()
    for i, record in enumerate(records):
        record["gen_input_configs"] = {"temperature": 1.0, "seed": i}
        record["difficulty"] = "easy"
    pairs, stats = _read(_jsonl(tmp_path / "zoo.jsonl", records))
    assert not stats.skipped and len(pairs) == len(QUESTIONS) * len(GENERATORS) - 1
    assert {p.teacher for p in pairs} == set(GENERATORS) and pairs[0].extra["difficulty"] == "easy"


def test_an_empty_zoo_answer_names_its_generator(tmp_path):
    records = zoo_records()
    records[4]["Llama-3.1-8B-Instruct"]["content"] = "   "
    pairs, stats = _read(_jsonl(tmp_path / "zoo.jsonl", records))
    assert [(r["line"], r["reason"]) for r in stats.skipped] == [(5, "empty response (generator 'Llama-3.1-8B-Instruct')")]
    assert stats.counts == {"dropped_empty_response": 1}


@pytest.mark.parametrize("layout", ["jsonl", "parquet"])
def test_an_ultrafeedback_completion_without_response_is_a_skipped_row(tmp_path, layout):
    records = ultrafeedback_records()
    del records[2]["completions"][1]["response"]
    path = tmp_path / f"uf.{layout}"
    if layout == "jsonl":
        _jsonl(path, records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    with pytest.raises(InputError, match=rf"uf\.{layout}:3: missing field: .*'llama-2-7b-chat'.*response"):
        list(read_pairs([path], reward_column="overall_score"))
    pairs, stats = _read(path, reward_column="overall_score")
    assert len(pairs) == 14
    assert [(r["path"], r["line"]) for r in stats.skipped] == [(str(path), 3)]
    assert "llama-2-7b-chat" in stats.skipped[0]["reason"]


def test_ultrafeedback_completions_that_are_not_answers_are_skipped_rows(tmp_path):
    records = ultrafeedback_records()
    records[0]["completions"].append("not an object")
    records[1]["completions"].append({"response": "who wrote me?"})
    pairs, stats = _read(_jsonl(tmp_path / "uf.jsonl", records))
    assert len(pairs) == 15
    assert [r["line"] for r in stats.skipped] == [1, 2]
    assert "completion 4" in stats.skipped[0]["reason"] and "model" in stats.skipped[1]["reason"]


def test_score_cli_counts_the_skipped_answers(tmp_path, tiny_llama):
    import subprocess
    import sys

    records = zoo_records()
    del records[1]["Qwen2.5-7B-Instruct"]["content"]
    records[3]["gemma-2-9b-it"] = "a bare answer"
    path = _jsonl(tmp_path / "zoo.jsonl", records)
    out = tmp_path / "scores.parquet"
    common = ["--student", f"hf:{tiny_llama}", "--reward-column", SKY, "--metrics", "car", "--dtype", "float32",
              "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "teachfit.cli", "score", str(path), *common, "--skip-invalid",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 skipped" in done.stdout + done.stderr
    from teachfit.files import read_table

    meta = read_table(out)[1]
    assert sorted((r["line"], r["reason"].split("'")[1]) for r in meta["skipped"]) == [
        (2, "Qwen2.5-7B-Instruct"), (4, "gemma-2-9b-it")]
    done = subprocess.run([sys.executable, "-m", "teachfit.cli", "score", str(path), *common,
                           "--out", str(tmp_path / "strict.parquet")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "zoo.jsonl:2:" in done.stderr and "Qwen2.5-7B-Instruct" in done.stderr
