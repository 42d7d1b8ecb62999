"""vLLM engine options in specs and experiment files, the kwargs that would reach vllm.LLM, and
the vllm: student up to its lazy import (no GPU and no vLLM here)."""
import math
import importlib.util
from types import SimpleNamespace

import pytest

from teachfit.config import ScoreConfig
from teachfit.experiment import load_experiment
from teachfit.generate import parse_teacher
from teachfit.models import ModelSpec, ModelSpecError, load
from teachfit.models.base import GenerationSettings
from teachfit.models.vllm_backend import engine_kwargs
from teachfit.score.vllm import response_logprobs, token_groups
from teachfit.records import InputError

BIG = "vllm:Qwen/Qwen2.5-72B-Instruct?tensor_parallel_size=4&max_model_len=8192"


def test_engine_options_reach_the_engine_kwargs():
    spec = ModelSpec.parse(BIG + "&gpu_memory_utilization=0.85&dtype=bfloat16&pipeline_parallel_size=2&enforce_eager=true")
    assert spec.name == "Qwen/Qwen2.5-72B-Instruct"
    assert engine_kwargs(spec) == {"model": "Qwen/Qwen2.5-72B-Instruct", "trust_remote_code": False,
                                   "tensor_parallel_size": 4, "max_model_len": 8192, "gpu_memory_utilization": 0.85,
                                   "dtype": "bfloat16", "pipeline_parallel_size": 2, "enforce_eager": True}
    assert ModelSpec.parse(str(spec)) == spec  # the recorded spec reads back the same
    scoring = engine_kwargs(ModelSpec.parse("vllm:m?max_num_batched_tokens=2048"), trust_remote_code=True, scoring=True)
    assert scoring["enable_prefix_caching"] is False and scoring["max_num_batched_tokens"] == 2048
    assert scoring["trust_remote_code"] is True
    assert engine_kwargs(ModelSpec.parse("vllm:m")) == {"model": "m", "trust_remote_code": False}


@pytest.mark.parametrize("text, words", [
    ("vllm:m?tensor_parallel=4", ["unknown vllm: option 'tensor_parallel'", "known:", "tensor_parallel_size"]),
    ("vllm:m?tensor_parallel_size=four", ["tensor_parallel_size", "'four' is not an integer"]),
    ("vllm:m?tensor_parallel_size=0", [">= 1"]),
    ("vllm:m?gpu_memory_utilization=90", ["(0, 1]"]),
    ("vllm:m?dtype=fp8", ["auto | float16 | bfloat16 | float32"]),
    ("vllm:m?enforce_eager=maybe", ["not a boolean"]),
])
def test_bad_engine_options_are_refused(text, words):
    with pytest.raises(ModelSpecError) as error:
        ModelSpec.parse(text)
    for word in words:
        assert word in str(error.value)


def test_teacher_specs_keep_engine_options_apart_from_sampling_settings():
    request = parse_teacher(BIG + "&temperature=0.8&name=qwen72", GenerationSettings())
    assert request.name == "qwen72" and request.settings.temperature == 0.8
    assert request.spec == "vllm:Qwen/Qwen2.5-72B-Instruct?max_model_len=8192&tensor_parallel_size=4"  # recorded as `model`
    assert parse_teacher(BIG, GenerationSettings()).name == "Qwen2.5-72B-Instruct"
    with pytest.raises(ValueError, match="spec options: tensor_parallel_size"):
        parse_teacher("vllm:m?tp=4", GenerationSettings())
    with pytest.raises(ValueError, match="unknown setting 'tensor_parallel_size'"):
        parse_teacher("hf:gpt2?tensor_parallel_size=4", GenerationSettings())  # engine options are vLLM's only


def test_experiment_teacher_mapping_takes_engine_options(tmp_path):
    path = tmp_path / "e.yaml"
    body = ("generate:\n  instructions: [i.jsonl]\n  teacher:\n"
            "    - {spec: vllm:Qwen/Qwen2.5-72B-Instruct, tensor_parallel_size: 4, max_model_len: 8192, "
            "enforce_eager: true, temperature: 0.8}\n"
            "score:\n  student: [\"vllm:Qwen/Qwen2.5-1.5B?tensor_parallel_size=2\"]\n")
    path.write_text(body)
    experiment = load_experiment(path)
    text = experiment.stages["generate"].teacher[0]
    request = parse_teacher(text, GenerationSettings())
    assert ModelSpec.parse(request.spec).options == (("enforce_eager", True), ("max_model_len", 8192),
                                                     ("tensor_parallel_size", 4))
    path.write_text(body.replace("tensor_parallel_size: 4", "tensor_parallel_size: four"))
    with pytest.raises(InputError, match="'four' is not an integer"):
        load_experiment(path)
    path.write_text(body.replace("tensor_parallel_size: 4", "tensor_paralel_size: 4"))
    with pytest.raises(InputError, match="did you mean 'tensor_parallel_size'"):
        load_experiment(path)
    path.write_text(body.replace("?tensor_parallel_size=2", "?tensor_parallel_size=x"))
    with pytest.raises(InputError, match="'x' is not an integer"):
        load_experiment(path)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_needs_its_extra(tmp_path):
    with pytest.raises(ImportError, match=r"pip install 'teachfit\[vllm\]'"):
        load("teacher", BIG)
    from conftest import PAIRS, write_pairs
    from teachfit.score.engine import score_files
    from teachfit.score.scorers import build_scorers

    options = ScoreConfig(progress=False, metrics=["ppl_self"])
    scorer = build_scorers("vllm:Qwen/Qwen2.5-1.5B?dtype=bfloat16", options)[0]
    assert scorer.key_material()["kind"] == "lm-vllm"  # known without vLLM: a cached run never loads it
    assert "dtype=bfloat16" in scorer.key_material()["spec"]
    pairs = write_pairs(tmp_path / "p.jsonl", [PAIRS[0] | {"teacher": "t"}])
    with pytest.raises(ImportError, match=r"teachfit\[vllm\]"):
        score_files([pairs], tmp_path / "s.parquet", "vllm:Qwen/Qwen2.5-1.5B", config=options)


def test_prompt_logprobs_to_response_nll_and_batches():
    lp = lambda value, rank: SimpleNamespace(logprob=value, rank=rank)  # noqa: E731  (vllm.sequence.Logprob)
    ids = [5, 6, 7, 8]
    prompt_logprobs = [None, {6: lp(-1.0, 1)}, {7: lp(-2.0, 3)}, {8: lp(-4.0, 250)}]
    nll, count, ranks = response_logprobs(prompt_logprobs, ids, 2)  # only the targets listed: no rank
    assert (nll, count) == (6.0, 2) and math.isnan(ranks)
    assert token_groups([3, 3, 5, 9, 1], budget=6) == [[0, 1], [2], [3], [4]]


# --- issue 23: the vLLM paths against vLLM's source, with fakes of vllm.LLM (no GPU, no vLLM here) ---

class _FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _FakeLLM:
    """vllm.LLM as far as teachfit uses it; refuses a prompt of max_model_len tokens or more and then
    fails the whole call, as vLLM's InputProcessor._validate_prompt_len does."""

    def __init__(self, tokenizer, max_model_len, vocab=1000):
        self.tokenizer, self.calls = tokenizer, []
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_model_len,
                                                                       get_vocab_size=lambda: vocab))

    def get_tokenizer(self):
        return self.tokenizer

    def _check(self, ids):
        limit = self.llm_engine.model_config.max_model_len
        if len(ids) >= limit:
            raise ValueError(f"The decoder prompt (length {len(ids)}) plus the number of requested output tokens "
                             f"(at least 1) is longer than the maximum model length of {limit}.")

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append([len(p["prompt_token_ids"]) for p in prompts])
        for prompt in prompts:
            self._check(prompt["prompt_token_ids"])
        lp = lambda: SimpleNamespace(logprob=-1.0, rank=1)  # noqa: E731
        return [SimpleNamespace(prompt_logprobs=[None] + [{t: lp()} for t in p["prompt_token_ids"][1:]])
                for p in prompts]

    def chat(self, conversations, params, use_tqdm=False, chat_template=None):
        self.calls.append({"n": len(conversations), "chat_template": chat_template, "params": params})
        ids = []
        for conversation in conversations:  # LLM.chat: render, then encode without special tokens
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True,
                                                      chat_template=chat_template)
            ids.append(self.tokenizer.encode(text, add_special_tokens=False))
            self._check(ids[-1])
        return [SimpleNamespace(outputs=[SimpleNamespace(text="ok", finish_reason="stop", token_ids=[1, 2])],
                                prompt_token_ids=i) for i in ids]


def _fake_engine(monkeypatch, module, llm):
    vllm = SimpleNamespace(SamplingParams=_FakeSamplingParams, __version__="fake")
    monkeypatch.setattr(module, "open_engine", lambda kwargs: (vllm, llm))


def test_vllm_scorer_cuts_pairs_to_max_model_len_minus_one(tiny_chatml, monkeypatch):
    from transformers import AutoTokenizer

    import teachfit.score.vllm as scorer_module
    from teachfit.models.vllm_backend import prompt_token_limit
    from teachfit.records import Pair

    assert prompt_token_limit(4096, 4096) == 4095 and prompt_token_limit(8192, 4096) == 4095
    assert prompt_token_limit(100, 4096) == 100 and prompt_token_limit(100, None) == 100
    llm = _FakeLLM(AutoTokenizer.from_pretrained(tiny_chatml), max_model_len=40)
    _fake_engine(monkeypatch, scorer_module, llm)
    options = ScoreConfig(progress=False, max_length=4096, metrics=["ppl_self", "ifd_self"])
    scorer = scorer_module.VLLMScorer(ModelSpec.parse("vllm:m"), "self", options)
    assert scorer.max_length == 39 and scorer.describe()["effective_max_length"] == 39
    long = Pair("long", "What is 2 + 2?", "The sea is wide and blue. " * 20, "t")
    [row] = scorer.compute([long])  # exactly max_model_len tokens would fail the whole call
    assert row["truncated"] and max(max(c) for c in llm.calls) == 39


def test_vllm_scoring_calls_are_bounded_by_vocabulary_times_tokens():
    from teachfit.score.vllm import SCORE_CALL_ELEMENTS, SCORE_CALL_TOKENS, call_token_budget

    assert SCORE_CALL_ELEMENTS == 2**28
    gemma = call_token_budget(262144)
    assert gemma == 1024 and gemma * 262144 <= SCORE_CALL_ELEMENTS  # 1 GiB of fp32 logprobs per call
    assert call_token_budget(152064) == 2**28 // 152064
    assert call_token_budget(100) == SCORE_CALL_TOKENS and call_token_budget(None) == SCORE_CALL_TOKENS
    groups = token_groups([600, 424, 20, 1000, 2000, 24], gemma)
    assert groups == [[0, 1], [2, 3], [4], [5]]  # a pair over the budget goes alone
    assert all(sum([600, 424, 20, 1000, 2000, 24][i] for i in g) <= gemma for g in groups if len(g) > 1)


def test_vllm_teacher_refuses_an_overlong_instruction_alone_with_the_hf_template_and_sampling(tiny_llama, tmp_path,
                                                                                                monkeypatch):
    from transformers import AutoTokenizer

    import teachfit.models.vllm_backend as backend
    from teachfit.generate import answer_all
    from teachfit.instructions import Instruction
    from teachfit.template import DEFAULT_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert not tokenizer.chat_template  # a base model: hf: gives it teachfit's template, so must vllm:
    llm = _FakeLLM(tokenizer, max_model_len=48)
    _fake_engine(monkeypatch, backend, llm)
    monkeypatch.setattr(backend, "generation_config_of", lambda spec: {"repetition_penalty": 1.05, "top_k": 20,
                                                                       "temperature": 0.7})
    request = parse_teacher("vllm:m?temperature=0.8&name=t", GenerationSettings())
    teacher = backend.load_vllm_teacher(ModelSpec.parse(request.spec))
    instructions = [Instruction("a", "Say hi.", "i"), Instruction("b", "word " * 80, "i"), Instruction("c", "Add 2 and 2.", "i")]
    stats = answer_all(instructions, request, tmp_path / "t.jsonl", lambda spec: teacher, show_progress=False)
    assert stats["errors"] == 1 and stats["generated"] == 2  # counted; the batch is not lost
    [call] = llm.calls
    assert call["n"] == 2 and call["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert all(p.repetition_penalty == 1.05 and p.top_k == 20 and p.temperature == 0.8 for p in call["params"])
    import json

    records = {r["id"]: r for r in map(json.loads, (tmp_path / "t.jsonl").read_text().splitlines())}
    assert "too long" in records["b"]["error"] and records["b"]["prompt_tokens"] >= 48
    assert records["a"]["error"] is None and records["a"]["response"] == "ok"
    backend_record = records["a"]["backend"]
    assert backend_record["model_sampling"] == {"repetition_penalty": 1.05, "top_k": 20}
    assert backend_record["template"] == "teachfit-alpaca-v1"


def test_model_sampling_settings_are_read_the_same_way_for_hf_and_vllm(tiny_llama, monkeypatch):
    from transformers import GenerationConfig

    from teachfit.models.base import model_sampling_defaults

    config = GenerationConfig(repetition_penalty=1.05, top_k=20, min_p=0.0, temperature=0.6)
    assert model_sampling_defaults(config) == {"repetition_penalty": 1.05, "top_k": 20}
    assert model_sampling_defaults({"repetition_penalty": 1.0, "top_k": -1, "min_p": 0.05}) == {"min_p": 0.05}
    assert model_sampling_defaults(GenerationConfig()) == {} and model_sampling_defaults(None) == {}
    teacher = load("teacher", f"hf:{tiny_llama}", device="cpu", dtype="float32")
    model = teacher.loaded.model
    model.generation_config.repetition_penalty, model.generation_config.top_k = 1.05, 20
    seen = {}
    original = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    settings = GenerationSettings(temperature=0.8, max_new_tokens=3)
    [out] = teacher.generate([[{"role": "user", "content": "Say hi."}]], settings, [7])
    assert out.error is None
    assert seen["repetition_penalty"] == 1.05
    assert any(type(p).__name__ == "TopKLogitsWarper" and p.top_k == 20 for p in seen["logits_processor"])
    assert teacher.describe()["model_sampling"] == {"repetition_penalty": 1.05, "top_k": 20}


def test_vllm_ranks_are_converted_to_teachfits_strict_rank_ties_included():
    """vLLM's rank counts the tokens at least as likely as the target (ties against it); teachfit's
    counts those strictly more likely. From the top 100 listed tokens the strict rank is exact:
    here bf16-rounded log-probabilities tie the target with 2 others, vLLM would say rank 4."""
    import torch

    from teachfit.score.vllm import strict_rank

    logits = torch.tensor([3.0, 2.0, 2.001, 2.002, 1.0] + [-5.0] * 120).to(torch.bfloat16)  # 2.0, 2.001, 2.002 tie
    logprobs = torch.log_softmax(logits.float(), -1).to(torch.bfloat16).float()
    target = 2
    vllm_rank = int((logprobs >= logprobs[target]).sum())
    teachfit_rank = 1 + int((logits > logits[target]).sum())
    top = torch.topk(logprobs, 100).indices.tolist()
    entry = {t: SimpleNamespace(logprob=float(logprobs[t]), rank=None) for t in set(top) | {target}}
    assert vllm_rank == 4 and teachfit_rank == 2
    assert strict_rank(entry, target, listed=100) == teachfit_rank
    assert math.isnan(strict_rank({target: entry[target]}, target, listed=0))  # not asked for: RSR left out
    far = {t: SimpleNamespace(logprob=0.0) for t in range(100)} | {200: SimpleNamespace(logprob=-9.0)}
    assert strict_rank(far, 200, listed=100) == 100  # clipped
