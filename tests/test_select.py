"""Selection from stored scores against plain loops over instructions; the written selection loads
with `datasets` and trains with TRL."""
import json
import math

import numpy as np
import pytest

from teachfit.files import read_pairs
from teachfit.records import Pair
from teachfit.select import select_pairs
from teachfit.training_set import attach_texts, write_selection

TEACHERS = ["delta", "alpha", "charlie", "bravo"]  # not in name order on purpose


def random_rows(seed=0, n_instructions=40):
    """Score rows of 4 teachers: random subsets per instruction (some single-candidate), values
    rounded so that ties happen, one pair without a reward, one instruction with no reward at all."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_instructions):
        k = 1 if i % 7 == 0 else int(rng.integers(2, 5))
        for teacher in rng.permutation(TEACHERS)[:k]:
            rows.append({"id": f"q{i}", "teacher": str(teacher), "reward": float(np.round(rng.normal(1.0, 2.0), 0)),
                         "loss_self": float(np.round(rng.uniform(0.5, 2.0), 1)), "length": int(rng.integers(5, 50))})
    several = [r for r in rows if sum(x["id"] == r["id"] for x in rows) >= 3]
    several[0]["reward"] = None  # a pair missing its reward: partial instruction
    lone = next(r for r in rows if sum(x["id"] == r["id"] for x in rows) == 1)
    lone["reward"] = math.nan  # a single-candidate instruction missing its reward: missing instruction
    return rows, several[0]["id"], lone["id"]


def plain_select(rows, score, needs, worst=False):
    """For each instruction id in first-seen order: the candidate with the best score(candidate,
    candidates); ties to the first teacher by name; candidates lacking a needed value left out."""
    order = []
    for r in rows:
        if r["id"] not in order:
            order.append(r["id"])
    chosen, missing = {}, []
    for iid in order:
        candidates = []
        for r in rows:
            if r["id"] == iid and all(r.get(n) is not None and not math.isnan(r[n]) for n in needs):
                candidates.append(r)
        if not candidates:
            missing.append(iid)
            continue
        candidates.sort(key=lambda r: r["teacher"])
        best, best_score = None, None
        for c in candidates:
            s = score(c, candidates)
            if best is None or (s < best_score if worst else s > best_score):
                best, best_score = c, s
        chosen[iid] = (best["teacher"], best_score)
    return chosen, missing


def picked(selection):
    return {r["instruction_id"]: (r["teacher"], r["selection_score"]) for r in selection.rows}


def check(selection, expected):
    chosen, missing = expected
    got = picked(selection)
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in chosen.items()}
    for key, (_, score) in chosen.items():
        assert got[key][1] == pytest.approx(score, abs=1e-12)
    assert selection.summary["missing"] == missing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_instruction_selectors_match_plain_loops(seed):
    rows, partial_id, missing_id = random_rows(seed)
    valid_rewards = [r["reward"] for r in rows if r["reward"] is not None and not math.isnan(r["reward"])]
    low = min(valid_rewards)

    def car_instance(shift):
        return lambda c, cs: (c["reward"] - (low if shift else 0.0)) / (1 + 2.0 * c["loss_self"])

    def persyn(c, cs):
        def norm(value, values):
            lo, hi = min(values), max(values)
            return 0.5 if hi == lo else (value - lo) / (hi - lo)
        q = norm(c["reward"], [x["reward"] for x in cs])
        l = norm(-c["loss_self"], [-x["loss_self"] for x in cs])
        return 0.7 * q + 0.3 * l

    both = ("reward", "loss_self")
    check(select_pairs(rows, "car-instance", beta=2.0), plain_select(rows, car_instance(False), both))
    check(select_pairs(rows, "car-instance", beta=2.0, reward_transform="shift"), plain_select(rows, car_instance(True), both))
    sig = select_pairs(rows, "car-instance", beta=2.0, reward_transform="sigmoid")
    check(sig, plain_select(rows, lambda c, cs: 1 / (1 + math.exp(-c["reward"])) / (1 + 2.0 * c["loss_self"]), both))
    grape = select_pairs(rows, "grape")
    check(grape, plain_select(rows, lambda c, cs: -c["loss_self"], ("loss_self",)))
    assert grape.summary["missing"] == [] and grape.summary["partial"] == []  # grape needs no reward
    check(select_pairs(rows, "persyn", alpha=0.3), plain_select(rows, persyn, both))
    best = select_pairs(rows, "reward")
    check(best, plain_select(rows, lambda c, cs: c["reward"], ("reward",)))
    check(select_pairs(rows, "reward", worst=True), plain_select(rows, lambda c, cs: c["reward"], ("reward",), worst=True))
    assert best.summary["missing"] == [missing_id] and partial_id in best.summary["partial"]

    # ties really happened and went to the first teacher by name
    ties = 0
    for r in best.rows:
        tied = sorted(x["teacher"] for x in rows if x["id"] == r["instruction_id"] and x["reward"] == r["selection_score"])
        ties += len(tied) > 1
        assert r["teacher"] == tied[0]
    assert ties >= 2
    # single-candidate instructions keep their only pair
    for r in rows:
        if sum(x["id"] == r["id"] for x in rows) == 1 and r["id"] != missing_id:
            assert picked(best)[r["id"]][0] == r["teacher"]


def test_car_takes_every_pair_of_the_top_car_teacher_and_summary_is_right():
    rows, _, missing_id = random_rows(3)
    valid = [r for r in rows if r["reward"] is not None and not math.isnan(r["reward"])]
    sums = {}
    for r in valid:
        s = sums.setdefault(r["teacher"], [0.0, 0.0, 0])
        s[0] += r["reward"]
        s[1] += r["loss_self"]
        s[2] += 1
    shift = min(r["reward"] for r in valid)
    car = {t: (s[0] / s[2] - shift) / (1 + 3.0 * s[1] / s[2]) for t, s in sums.items()}
    top = max(sorted(car), key=lambda t: car[t])
    selection = select_pairs(rows, "car", reward_transform="shift")
    assert {r["teacher"] for r in selection.rows} == {top}
    assert sorted(r["instruction_id"] for r in selection.rows) == sorted(r["id"] for r in valid if r["teacher"] == top)
    assert all(r["selection_score"] == pytest.approx(car[top]) for r in selection.rows)
    assert selection.summary["car_teacher"] == top and selection.summary["share"][top] == 1.0
    not_top = sorted({r["id"] for r in rows} - {r["id"] for r in valid if r["teacher"] == top})
    assert sorted(selection.summary["missing"]) == not_top  # instructions the top teacher did not answer
    worst = select_pairs(rows, "car", reward_transform="shift", worst=True)
    assert {r["teacher"] for r in worst.rows} == {min(sorted(car), key=lambda t: car[t])}

    # summary: shares and means of the selection beside each teacher's
    reward_sel = select_pairs(rows, "reward")
    chosen = reward_sel.rows
    counts = {t: sum(r["teacher"] == t for r in chosen) for t in TEACHERS}
    assert reward_sel.summary["share"] == {t: counts[t] / len(chosen) for t in sorted(TEACHERS)}
    assert reward_sel.summary["selection"]["reward"] == pytest.approx(sum(r["reward"] for r in chosen) / len(chosen))
    assert reward_sel.summary["selection"]["length"] == pytest.approx(sum(r["length"] for r in chosen) / len(chosen))
    own = [r["loss_self"] for r in rows if r["teacher"] == "bravo"]
    assert reward_sel.summary["teachers"]["bravo"]["loss_self"] == pytest.approx(sum(own) / len(own))
    assert reward_sel.summary["teachers"]["bravo"]["n_pairs"] == len(own)


def test_random_is_seeded_and_best_of_n_groups_samples():
    rows, _, _ = random_rows(4)
    a, b, c = (select_pairs(rows, "random", seed=s) for s in (7, 7, 8))
    assert picked(a) == picked(b) and picked(a) != picked(c)
    assert len(a.rows) == len({r["id"] for r in rows})  # random needs no score: nothing missing
    # N samples of one teacher: ids <instruction>#s<k>, grouped by instruction
    samples = [{"id": f"x{i}#s{k}", "teacher": "t", "reward": float((i * 7 + k * 3) % 5), "loss_self": 1.0}
               for i in range(5) for k in range(4)]
    best = select_pairs(samples, "reward")
    worst = select_pairs(samples, "reward", worst=True)
    for i in range(5):
        rewards = [(i * 7 + k * 3) % 5 for k in range(4)]
        assert picked(best)[f"x{i}"] == ("t", max(rewards))
        assert picked(worst)[f"x{i}"] == ("t", min(rewards))
        assert next(r["id"] for r in best.rows if r["instruction_id"] == f"x{i}") == f"x{i}#s{rewards.index(max(rewards))}"
    explicit = [dict(r, instruction_id="same") for r in samples]
    assert len(select_pairs(explicit, "reward").rows) == 1


def test_errors_are_clear():
    with pytest.raises(ValueError, match="needs the column"):
        select_pairs([{"id": "a", "teacher": "t", "loss_self": 1.0}], "reward")
    with pytest.raises(ValueError, match="unknown selection method"):
        select_pairs([{"id": "a", "teacher": "t", "loss_self": 1.0}], "best")
    rows, _, _ = random_rows(0)
    selection = select_pairs(rows, "grape")
    with pytest.raises(ValueError, match="no response text"):
        attach_texts(selection, [])


def pairs_for(rows):
    return [Pair(id=r["id"], instruction=f"Question {r['id']}: what is {r['id']}?",
                 response=f"{r['teacher']} says {r['id']} is a question.", teacher=r["teacher"]) for r in rows]


@pytest.mark.parametrize("fmt", ["messages", "alpaca", "sharegpt"])
def test_written_selection_loads_with_datasets_and_reads_back(tmp_path, fmt):
    datasets = pytest.importorskip("datasets")
    rows, _, missing_id = random_rows(5)
    pairs = pairs_for(rows) + [Pair(id="unscored", instruction="Never scored?", response="No.", teacher="alpha")]
    selection = select_pairs(rows, "persyn")
    summary = write_selection(selection, pairs, tmp_path / "sel.jsonl", fmt)
    assert missing_id in summary["missing"] and "unscored" in summary["missing"]
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "sel.jsonl"), split="train")
    assert len(loaded) == len(selection.rows)
    first, chosen = loaded[0], selection.rows[0]
    assert first["teacher"] == chosen["teacher"] and first["id"] == chosen["id"]
    assert first["selection_score"] == pytest.approx(chosen["selection_score"])
    text = f"{chosen['teacher']} says {chosen['id']} is a question."
    if fmt == "messages":
        assert first["messages"][1] == {"role": "assistant", "content": text}
    elif fmt == "alpaca":
        assert first["output"] == text and first["input"] == ""
    else:
        assert first["conversations"][0]["from"] == "human" and first["conversations"][1]["value"] == text
    back = list(read_pairs([tmp_path / "sel.jsonl"]))  # teachfit reads its own output too
    assert [(p.teacher, p.response) for p in back] == [(r["teacher"], f"{r['teacher']} says {r['id']} is a question.")
                                                      for r in selection.rows]
    assert json.loads((tmp_path / "sel.jsonl.meta.json").read_text())["method"] == "persyn"


def test_parquet_and_save_to_disk_outputs(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows, _, _ = random_rows(6)
    selection = select_pairs(rows, "grape")
    write_selection(selection, pairs_for(rows), tmp_path / "sel.parquet", "messages")
    table = datasets.load_dataset("parquet", data_files=str(tmp_path / "sel.parquet"), split="train")
    assert table["teacher"] == [r["teacher"] for r in selection.rows]
    write_selection(selection, pairs_for(rows), tmp_path / "sel_dir", "sharegpt")
    folder = datasets.load_from_disk(str(tmp_path / "sel_dir"))
    assert folder["id"] == [r["id"] for r in selection.rows]
    assert json.loads((tmp_path / "sel_dir" / "teachfit_selection.json").read_text())["format"] == "sharegpt"


def test_the_select_stage_joins_texts_from_the_recorded_inputs(tmp_path):
    from teachfit.files import write_jsonl, write_table

    rows, _, _ = random_rows(7)
    files = []
    for teacher in TEACHERS:
        path = tmp_path / "responses" / f"{teacher}.jsonl"
        write_jsonl(path, [p.to_dict() for p in pairs_for([r for r in rows if r["teacher"] == teacher])])
        files.append(str(path))
    write_table(tmp_path / "scores" / "scores.parquet", rows, {"inputs": files})
    from teachfit.config import SelectConfig
    from teachfit.run import RunDir
    from teachfit.select import run_select

    summary = run_select(SelectConfig(inputs=[str(tmp_path)], by="reward", out=str(tmp_path / "sel.jsonl"),
                                      format="messages"), RunDir(tmp_path))
    written = [json.loads(line) for line in (tmp_path / "sel.jsonl").open()]
    assert [w["teacher"] for w in written] == [r["teacher"] for r in select_pairs(rows, "reward").rows]
    assert summary["n_selected"] == len(written)
    # the texts are the source pairs' own: read back from the response files here, line by line
    source = {}
    for path in files:
        for line in open(path, encoding="utf-8"):
            record = json.loads(line)
            source[(record["teacher"], record["id"])] = (record["instruction"], record["response"])
    assert len(set(source.values())) == len(source) == len(rows)  # every pair's texts are its own
    for w in written:
        user, assistant = w["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert (user["content"], assistant["content"]) == source[(w["teacher"], w["id"])], w


def test_a_tiny_trl_sft_step_trains_on_the_selection(tmp_path, tiny_chatml):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows, _, _ = random_rows(8, n_instructions=8)
    write_selection(select_pairs(rows, "car-instance"), pairs_for(rows), tmp_path / "sel.jsonl", "messages")
    data = datasets.load_dataset("json", data_files=str(tmp_path / "sel.jsonl"), split="train")
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                         learning_rate=1e-2, report_to=[], max_length=128, save_strategy="no", disable_tqdm=True,
                         bf16=False, use_cpu=True)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss) and result.training_loss > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
