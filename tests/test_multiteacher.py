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
    ranking = rank_teachers(rows, beta=3.0, n_bootstrap=0)
    for row in ranking.rows:
        keys = [k for k in file_rewards if k[1] == row["teacher"]]
        mean_reward = sum(file_rewards[k] for k in keys) / len(keys)
        mean_loss = sum(loss[k] for k in keys) / len(keys)
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
