"""Rewards against a direct computation with the same model."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from conftest import CHATML, PAIRS, build_tokenizer
from teachfit.forward import BatchPlan
from teachfit.models import load
from teachfit.records import Pair
from teachfit.score.reward import JudgeReward, SequenceClassifierReward, expected_rating, judge_prompt_template

PAIR_OBJECTS = [Pair(p["id"], p["instruction"], p["response"], "t") for p in PAIRS]


def test_expected_rating_worked_example():
    # all mass on 9 -> 9; uniform -> 5; half on 2, half on 8 -> 5
    assert expected_rating([0.0] + [-1e9] * 7 + [0.0], ratings=[1, 2, 3, 4, 5, 6, 7, 8, 9]) == pytest.approx(5.0)
    assert expected_rating([-50.0] * 8 + [0.0]) == pytest.approx(9.0)
    assert expected_rating([math.log(0.5) if r in (2, 8) else -1e9 for r in range(1, 10)]) == pytest.approx(5.0)


def test_judge_reward_matches_direct_softmax(tiny_chatml):
    loaded = load("causal_lm", f"hf:{tiny_chatml}", dtype="float32")
    judge = JudgeReward(loaded, BatchPlan(256, 3))
    got = judge.compute(PAIR_OBJECTS)
    tok = AutoTokenizer.from_pretrained(tiny_chatml)
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml, dtype=torch.float32).eval()
    digits = [tok(str(d), add_special_tokens=False)["input_ids"][0] for d in range(1, 10)]
    for pair, row in zip(PAIR_OBJECTS, got):
        text = judge_prompt_template().format(instruction=pair.instruction, response=pair.response)
        prompt = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)[digits]
        expected = float((probs * torch.arange(1, 10)).sum() / probs.sum())
        assert row["reward"] == pytest.approx(expected, abs=1e-6)
        assert row["reward_rating_mass"] == pytest.approx(float(probs.sum()), rel=1e-4)


def test_sequence_classifier_reward_matches_single_forward(tmp_path):
    tok = build_tokenizer(CHATML)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load("sequence_classifier", f"hf:{tmp_path}", dtype="float32")
    got = SequenceClassifierReward(loaded, BatchPlan(4096, 8)).compute(PAIR_OBJECTS)
    for pair, row in zip(PAIR_OBJECTS, got):
        text = f"<|im_start|>user\n{pair.instruction}<|im_end|>\n<|im_start|>assistant\n{pair.response}<|im_end|>\n"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = loaded.model(torch.tensor([ids])).logits[0, 0].item()
        assert row["reward"] == pytest.approx(expected, abs=1e-5)
    from teachfit.score.reward import load_reward
    assert isinstance(load_reward(f"hf:{tmp_path}", "auto", BatchPlan(), 512, dtype="float32"), SequenceClassifierReward)
