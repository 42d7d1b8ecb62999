"""What `score` says about its own work: the progress bar's total counts pairs (not input rows:
a Zoo row holds several teachers' answers), and the summary says how many pairs came from the
cache and how many were computed."""
import json

from conftest import write_pairs
from test_multiteacher import SKY, zoo_records
from teachfit.config import ScoreConfig
from teachfit.files import read_pairs
from teachfit.score.engine import score_files, score_pairs
from teachfit.score.scorers import build_scorers


class Bar:
    """A stand-in for tqdm: what total it was given and how far it went."""

    def __init__(self):
        self.total, self.n, self.refreshed = None, 0, 0

    def update(self, steps):
        self.n += steps

    def refresh(self):
        self.refreshed += 1


def test_the_progress_total_counts_pairs_of_a_zoo_file(tmp_path):
    path = write_pairs(tmp_path / "zoo.jsonl", zoo_records())  # 5 rows, 14 answers (gemma skipped one)
    config = ScoreConfig(student=["hf:unused"], reward_column=SKY, metrics=["reward", "length"], progress=False)
    scorers = build_scorers("hf:unused", config, [path])
    bar = Bar()
    rows = list(score_pairs(lambda: read_pairs([path], reward_column=SKY), scorers, tmp_path / "cache", config, bar))
    assert len(rows) == 14 and bar.total == 14 * len(scorers) == bar.n


def test_the_summary_says_what_came_from_the_cache(tmp_path, tiny_llama):
    rows = [{"id": f"p{k}", "instruction": f"Question {k}?", "response": f"Answer {k}."} for k in range(6)]
    path = write_pairs(tmp_path / "t.jsonl", rows)
    config = ScoreConfig(student=[f"hf:{tiny_llama}"], metrics=["ppl_self"], dtype="float32", progress=False)
    first = score_files([path], tmp_path / "a.parquet", f"hf:{tiny_llama}", config, tmp_path / "cache")
    assert (first["counts"]["computed"], first["counts"]["cached"]) == (6, 0)
    write_pairs(path, rows + [{"id": "new", "instruction": "A new question?", "response": "A new answer."}])
    second = score_files([path], tmp_path / "b.parquet", f"hf:{tiny_llama}", config, tmp_path / "cache")
    assert (second["counts"]["computed"], second["counts"]["cached"], second["counts"]["scored"]) == (1, 6, 7)
    assert json.loads(json.dumps(second["inputs"])) == [str(path.resolve())]  # absolute: select works from anywhere


def test_a_reward_read_from_the_file_has_no_pass_or_cache_of_its_own(tmp_path):
    path = write_pairs(tmp_path / "zoo.jsonl", zoo_records())
    config = ScoreConfig(student=["hf:unused"], reward_column=SKY, metrics=["reward", "length"], progress=False)
    scorers = build_scorers("hf:unused", config, [path])
    readings = []

    def pairs():
        readings.append(1)
        return read_pairs([path], reward_column=SKY)

    rows = list(score_pairs(pairs, scorers, tmp_path / "cache", config))
    # one pass for the length (cached), one to assemble the rows, where the rewards are read: not three
    assert len(readings) == 2 and len(list((tmp_path / "cache").iterdir())) == 1
    expected = {(p.id, p.teacher): p.extra["reward"] for p in read_pairs([path], reward_column=SKY)}
    assert {(r["id"], r["teacher"]): r["reward"] for r in rows} == expected and [*rows[0]][:4] == ["id", "teacher", "reward", "length"]
    only_reward = ScoreConfig(student=["hf:unused"], reward_column=SKY, metrics=["reward"], progress=False)
    computed, bar = [], Bar()
    rows = list(score_pairs(pairs, build_scorers("hf:unused", only_reward, [path]), tmp_path / "cache2", only_reward,
                            bar, computed=computed))
    assert len(rows) == 14 and computed == [14] and bar.total == bar.n == 14 and len(readings) == 3
