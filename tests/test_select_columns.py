"""select on columns (issue 21: 2M scored pairs) gives what select on one dict per pair gave: the
same rows, summary, ties, random draws and messages, as JSON text, against the per-row code kept
in tests/select_reference.py; from dict rows, from an Arrow table and from a Parquet file."""
import json
import math
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import select_reference as old

from teachfit.files import read_table_columnar
from teachfit.select import METHODS, select_pairs

TEACHERS = ["delta", "alpha", "Charlie", "bravo", "écho"]  # not in name order; upper case and non-ASCII names


def scores(seed, instructions=30, samples=1, odd=0.08, instruction_ids=False, length=True, overflow=False):
    """Score rows in a shuffled order: answers missing, rounded values (ties), rewards NaN, None or
    absent, losses infinite or -1/2 (1 + 2 * loss = 0: a non-finite car-instance score at beta 2),
    a repeated (teacher, id) pair; with `overflow`, rewards of +-1e308 (PerSyn's max - min overflows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(instructions):
        for teacher in rng.permutation(TEACHERS)[: int(rng.integers(1, len(TEACHERS) + 1))]:
            for k in range(samples):
                row = {"id": f"q{i}" + (f"#s{k}" if samples > 1 else ""), "teacher": str(teacher),
                       "reward": float(np.round(rng.normal(0.5, 1.5))),
                       "loss_self": float(np.round(rng.uniform(0.2, 2), 1))}
                if length:
                    row["length"] = int(rng.integers(1, 60))
                for name, bad in (("reward", [math.nan, None, math.inf, -math.inf, "absent"]),
                                  ("loss_self", [math.inf, -0.5, None, math.nan, "absent"])):
                    if rng.random() < odd:
                        value = bad[int(rng.integers(0, len(bad)))]
                        if value == "absent":
                            del row[name]
                        else:
                            row[name] = value
                if overflow and rng.random() < 0.3:
                    row["reward"] = float(rng.choice([1e308, -1e308]))
                if instruction_ids:
                    row["instruction_id"] = [f"I{i % 7}", "", None][int(rng.integers(0, 3))]
                rows.append(row)
    rows.append(dict(rows[3]))  # the same pair twice: ties by table order
    return [rows[k] for k in rng.permutation(len(rows))]


def outcome(call):
    """(the selection's rows and summary, or the ValueError raised, as JSON text; the distinct warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            selection = call()
            result = json.dumps({"rows": selection.rows, "summary": selection.summary})  # repr of floats: same bits
        except ValueError as error:
            result = f"ValueError: {error}"
    return result, sorted({str(w.message) for w in caught})


def arrow_of(rows):
    """The rows as an Arrow table; a column of numbers and text (which Arrow cannot hold) as text."""
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        names = dict.fromkeys(k for r in rows for k in r)
        mixed = {k for k in names if len({type(r.get(k)) for r in rows} - {type(None)}) > 1}
        return pa.Table.from_pylist([{k: str(v) if k in mixed and v is not None else v for k, v in r.items()}
                                     for r in rows])


def same(rows, tmp_path=None, **options):
    """select_pairs on `rows`, on them as an Arrow table and as a Parquet file read back gives the
    per-row select's result (on the rows, and on the table's rows), and leaves the rows as they were."""
    before = json.dumps(rows)
    expected = outcome(lambda: old.select_pairs(rows, **options))
    assert outcome(lambda: select_pairs(rows, **options)) == expected
    assert json.dumps(rows) == before
    table = arrow_of(rows) if rows else pa.table({})
    assert outcome(lambda: select_pairs(table, **options)) == outcome(
        lambda: old.select_pairs(table.to_pylist(), **options))
    if tmp_path is not None and rows:
        pq.write_table(table, tmp_path / "scores.parquet")
        read, _ = read_table_columnar(tmp_path / "scores.parquet")
        assert outcome(lambda: select_pairs(read, **options)) == outcome(
            lambda: old.select_pairs(read.to_pylist(), **options))
    return expected


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_method_setting_and_transform_gives_the_per_row_selection(seed, tmp_path):
    rows = scores(seed, samples=1 + seed % 2, instruction_ids=seed == 2, length=seed != 3)
    seen = {"missing": 0, "partial": 0, "dropped": 0, "ties": 0}
    for method in METHODS:
        for worst in ((False,) if method == "random" else (False, True)):
            for transform, beta, alpha in (("raw", 3.0, 0.4), ("shift", 2.0, 0.0), ("sigmoid", 0.0, 1.0)):
                result, _ = same(rows, tmp_path if transform == "raw" else None, method=method, worst=worst,
                                 reward_transform=transform, beta=beta, alpha=alpha, seed=seed)
                if not result.startswith("{"):
                    continue
                summary = json.loads(result)["summary"]
                seen["missing"] += bool(summary["missing"])
                seen["partial"] += bool(summary["partial"])
                seen["dropped"] += summary["dropped_nonfinite"] > 0
                seen["ties"] += method == "reward" and any(r["candidates"] > 1 for r in json.loads(result)["rows"])
    assert all(seen.values()), seen  # the cases are exercised


def test_car_instance_scores_that_are_not_finite_and_persyn_overflow():
    rows = scores(5, overflow=True)
    for method in ("car-instance", "persyn"):
        for worst in (False, True):
            result, _ = same(rows, method=method, beta=2.0, worst=worst)
            assert json.loads(result)["summary"]["dropped_nonfinite"] > 0
    # every candidate's score not finite: missing, not partial; one of two: partial
    zero = [{"id": i, "teacher": t, "reward": 1.0, "loss_self": -0.5 if i == "all" or (i, t) == ("one", "a") else 1.0}
            for i in ("all", "one", "none") for t in ("a", "b")]
    summary = json.loads(same(zero, method="car-instance", beta=2.0)[0])["summary"]
    assert (summary["missing"], summary["partial"], summary["dropped_nonfinite"]) == (["all"], ["one"], 3)


def test_random_draws_are_the_per_instruction_ones():
    rows = scores(6, samples=3, instructions=60)
    for seed in (0, 1, 12345):
        result, _ = same(rows, method="random", seed=seed)
        assert len(json.loads(result)["rows"]) == len({r["id"].split("#")[0] for r in rows})


def test_ties_go_to_the_first_teacher_by_name_then_the_first_id():
    rows = [{"id": i, "teacher": t, "reward": 1.0, "loss_self": 1.0, "instruction_id": "x"}
            for t in ("b", "B", "a") for i in ("z2", "z10", "z1")]
    result, _ = same(rows, method="reward")
    assert [(r["teacher"], r["id"]) for r in json.loads(result)["rows"]] == [("B", "z1")]
    ints = [{"id": k, "teacher": t, "reward": float(k % 2), "loss_self": 1.0} for t in (10, 9) for k in range(4)]
    for method in ("reward", "grape", "car"):  # teachers and ids that are not text: str() of each, as before
        same(ints, method=method)


def test_larger_tables_and_explicit_instruction_ids(tmp_path):
    rows = scores(7, instructions=400, samples=2, instruction_ids=True)
    for method in METHODS:
        same(rows, tmp_path, method=method, seed=3)


def test_the_errors_are_the_per_row_ones():
    rows = scores(8)
    for options in ({"method": "best"}, {"method": "reward", "alpha": 1.5}, {"method": "car-instance", "beta": -1.0},
                    {"method": "car-instance", "beta": math.inf}, {"method": "random", "worst": True}):
        assert same(rows, **options)[0].startswith("ValueError")
    assert same([], method="reward")[0] == "ValueError: no score rows to select from"
    no_reward = [{k: v for k, v in r.items() if k != "reward"} for r in rows]
    assert "needs the column(s) ['reward']" in same(no_reward, method="car")[0]
    nothing_usable = [dict(r, loss_self=math.nan) for r in rows]
    assert same(nothing_usable, method="grape")[0].startswith("ValueError: no score row has every column")
    assert same(nothing_usable, method="reward")[0].startswith("{")


def test_run_select_reads_columns_and_keeps_only_the_selected_texts(tmp_path):
    """run_select on a Parquet scores file: --teacher filters the table as it filtered rows, the texts
    are the selected pairs' own, an instruction with responses but no score is reported missing, and
    a selected pair whose text is absent is an error naming it."""
    from teachfit.config import SelectConfig
    from teachfit.files import write_jsonl, write_table
    from teachfit.records import Pair, instruction_key
    from teachfit.select import run_select
    from teachfit.training_set import selected_texts

    rows = [r for r in scores(9, samples=2) if r["teacher"] != "écho"]
    teachers = sorted({r["teacher"] for r in rows})
    files = []
    for teacher in teachers:
        pairs = [Pair(id=r["id"], instruction=f"Question {r['id']}?", response=f"{teacher} on {r['id']}",
                      teacher=teacher) for r in rows if r["teacher"] == teacher]
        pairs += [Pair(id="never#s0", instruction="Never scored?", response="No.", teacher=teacher)]
        path = tmp_path / "responses" / f"{teacher}.jsonl"
        write_jsonl(path, [p.to_dict() for p in {p.id: p for p in pairs}.values()])  # one line per pair
        files.append(str(path))
    write_table(tmp_path / "scores.parquet", rows, {"inputs": files})
    for teacher, worst in ((None, False), ("bravo", False), ("bravo", True)):
        out = tmp_path / f"sel-{teacher}-{worst}.jsonl"
        summary = run_select(SelectConfig(inputs=[str(tmp_path / "scores.parquet")], by="reward", teacher=teacher,
                                          worst=worst, out=str(out), format="alpaca"), None)
        chosen = [r for r in rows if teacher is None or r["teacher"] == teacher]
        expected = old.select_pairs(chosen, "reward", worst=worst)
        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(w["teacher"], w["id"], w["selection_score"]) for w in written] == [
            (r["teacher"], r["id"], r["selection_score"]) for r in expected.rows]
        assert all(w["output"] == f"{w['teacher']} on {w['id']}" for w in written)
        known = {r["instruction_id"] for r in expected.rows} | set(expected.summary["missing"])
        unscored = {instruction_key(r) for r in rows} - known  # with --teacher: what the others answered
        assert summary["missing"] == expected.summary["missing"] + sorted(unscored | {"never"})
    with pytest.raises(ValueError, match="no scored pairs of teacher 'nobody'"):
        run_select(SelectConfig(inputs=[str(tmp_path / "scores.parquet")], by="reward", teacher="nobody",
                                out=str(tmp_path / "x.jsonl")), None)
    write_table(tmp_path / "scores.parquet", rows, {"inputs": files[1:]})  # the first teacher's texts are gone
    with pytest.raises(ValueError, match=rf"no response text for \d+ selected pair\(s\), e.g. \['{teachers[0]}/"):
        run_select(SelectConfig(inputs=[str(tmp_path / "scores.parquet")], by="reward", out=str(tmp_path / "y.jsonl")),
                   None)
    selection = select_pairs(rows, "grape")
    kept = selected_texts(selection, (Pair(id=r["id"], instruction="x", response="y", teacher=r["teacher"])
                                      for r in rows))
    assert set(kept.pairs) == {(r["teacher"], r["id"]) for r in selection.rows} and kept.unscored == set()
