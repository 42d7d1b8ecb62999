"""vLLM engine options in specs and experiment files, the kwargs that would reach vllm.LLM, and
the vllm: student up to its lazy import (no GPU and no vLLM here)."""
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
    assert response_logprobs(prompt_logprobs, ids, 2) == (6.0, 2, 3 + 100)  # ranks clipped at 100
    assert token_groups([3, 3, 5, 9, 1], budget=6) == [[0, 1], [2], [3], [4]]
