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
from conftest import PAIRS, Server, score_fails_in_one_line, write_pairs
from fake_openai_server import FakeServer, canned

from teachfit.config import ScoreConfig
from teachfit.models import ModelSpecError
from teachfit.records import InputError, Pair
from teachfit.score.engine import score_files
from teachfit.score.scorers import build_scorers

needs_llama = pytest.mark.packaged("llama_cpp.server.app")  # the packaged SmolLM2 behind llama.cpp's server

PACKAGED = "packaged:smollm2-135m-instruct"
SECRET = "sk-teachfit-served-test-4c0ffee"
TOLERANCE = 0.15  # nats per response token (see the docstring for the measured differences)


@pytest.fixture(scope="module")
def server():  # used by tests marked packaged("llama_cpp.server.app"): checked before this starts
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


@needs_llama
def test_served_loss_matches_in_process_and_key_stays_out(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("SERVED_KEY", SECRET)
    pairs = write_pairs(tmp_path / "pairs.jsonl", [p | {"teacher": "t"} for p in (PAIRS[0], PAIRS[2])])
    options = ScoreConfig(dtype="float32", device="cpu", progress=False, metrics=["ppl_self", "ifd_self"],
                          concurrency=2)
    served_spec = f"openai:smol@{server.url}?server=llamacpp&template={PACKAGED}&key_env=SERVED_KEY"
    served = score_files([pairs], tmp_path / "served.parquet", served_spec, config=options,
                         cache_dir=tmp_path / "cache")
    local = score_files([pairs], tmp_path / "local.parquet", PACKAGED, config=options,
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
    # whether the server adds BOS is recorded (then the template's BOS text is not sent: never doubled)
    assert isinstance(described["model"]["server_adds_bos"], bool)
    scorers = [build_scorers(spec, options)[0] for spec in (served_spec, PACKAGED)]
    assert scorers[0].key_material() != scorers[1].key_material()
    assert local["scorers"][0]["model"]["spec"] == PACKAGED
    # the key never lands in the outputs or the cache
    for root, _, files in os.walk(tmp_path):
        for name in files:
            assert SECRET.encode() not in open(os.path.join(root, name), "rb").read(), name
    # a second run computes nothing: every pair comes from the cache (a dead URL would fail otherwise)
    again = score_files([pairs], tmp_path / "again.parquet", served_spec, config=options,
                        cache_dir=tmp_path / "cache")
    assert again["counts"]["scored"] == 2 and _rows(tmp_path / "again.parquet") == a


@needs_llama
def test_server_without_prompt_logprobs_is_refused(tmp_path):
    srv = Server("--logits_all", "false")
    srv.start()
    try:
        pairs = write_pairs(tmp_path / "pairs.jsonl", [PAIRS[2] | {"teacher": "t"}])
        options = ScoreConfig(progress=False, metrics=["ppl_self"], max_retries=5)
        with pytest.raises(ModelSpecError, match="--logits_all true"):
            score_files([pairs], tmp_path / "s.parquet", f"openai:smol@{srv.url}?template={PACKAGED}", config=options, cache_dir=tmp_path / "cache")
    finally:
        srv.stop()


def test_served_spec_options_are_checked():
    from teachfit.models import ModelSpec

    spec = ModelSpec.parse("openai:m@http://127.0.0.1:1/v1?server=sglang&template=hf:gpt2")
    assert spec.option("server") == "sglang" and spec.option("template") == "hf:gpt2"
    with pytest.raises(ModelSpecError, match=r"unknown openai: option 'serve' \(known: .*key_env, server, template\)"):
        ModelSpec.parse("openai:m@http://127.0.0.1:1/v1?serve=vllm")
    with pytest.raises(ModelSpecError, match="llamacpp | vllm | sglang"):
        ModelSpec.parse("openai:m@http://127.0.0.1:1/v1?server=tgi")


# --- vLLM and SGLang dialects, 401s and the key rule: the fake-but-real HTTP server on 127.0.0.1 ---

@pytest.fixture
def fake():
    servers = []

    def start(kind):  # vllm | sglang: the dialect it speaks; 401: every request refused, the key echoed
        servers.append(FakeServer(owned_by=kind))
        if kind == "401":
            servers[-1].default = "echo401"
        return servers[-1]

    yield start
    for srv in servers:
        srv.stop()


LONG = {"id": "long", "instruction": "What is 2 + 2?", "response": "The sea is wide and blue, and the waves come and go. " * 8}


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_token_ids_are_sent_and_the_response_starts_at_encode_pairs_boundary(fake, kind, tiny_chatml, monkeypatch):
    from transformers import AutoTokenizer

    from teachfit.models import load
    from teachfit.template import encode_pair, encode_response_alone

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # a plain-http URL without key_env gets no key
    srv = fake(kind)
    options = ScoreConfig(progress=False, max_length=48, metrics=["ppl_self", "ifd_self"])
    spec = f"openai:m@{srv.url}?template=hf:{tiny_chatml}"  # server=auto: asked once, kind recorded
    [scorer] = build_scorers(spec, options)
    assert scorer.key_material()["server"] == kind
    model = load("lm_scorer", spec, lm_role="self", options=options)
    assert model.describe()["model"]["server"] == kind
    pairs = [Pair(p["id"], p["instruction"], p["response"], "t") for p in (PAIRS[0], PAIRS[2], LONG)]
    rows = model.compute(pairs)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    posts = [r for r in srv.requests if "body" in r][1:]  # after the probe
    assert all(r["auth"] is None for r in srv.requests)
    sent = [r["body"]["prompt" if kind == "vllm" else "input_ids"] for r in posts]
    for pair, row in zip(pairs, rows):
        encoded = encode_pair(tokenizer, pair.instruction, pair.response, 48)
        assert encoded.input_ids in sent  # teachfit's token ids, nothing added by the server
        expected = [-canned(k) for k in range(encoded.response_start, len(encoded.input_ids))]
        assert row["n_response_tokens"] == len(expected)
        assert row["loss_self"] == pytest.approx(sum(expected) / len(expected))
        assert row["truncated"] == (pair.id == "long") == encoded.truncated
        alone = encode_response_alone(tokenizer, pair.response, 48)
        assert alone.input_ids in sent
        uncond = [-canned(k) for k in range(alone.response_start, len(alone.input_ids))]
        assert row["loss_self_uncond"] == pytest.approx(sum(uncond) / len(uncond))
    assert "rsr_self" not in rows[0]  # not asked for: vLLM is asked for the targets' log-probabilities only
    if kind == "sglang":
        assert all(r["path"] == "/generate" for r in posts)
    else:
        assert all(r["body"]["add_special_tokens"] is False and r["body"]["prompt_logprobs"] == 0 for r in posts)
    if kind == "vllm":  # RSR asked for: the top 100 tokens of each position (strict ranks, score.vllm.strict_rank)
        ranked = load("lm_scorer", spec, lm_role="self", options=ScoreConfig(progress=False, max_length=48,
                                                                             metrics=["rsr_self"]))
        assert "rsr_self" in ranked.compute(pairs[:1])[0]
        assert srv.requests[-1]["body"]["prompt_logprobs"] == 100
    too_long = Pair("x", "word " * 60, "y", "t", source="pairs.jsonl:7")
    with pytest.raises(InputError, match=r"instruction longer than max_length .*\(pair x\)"):
        model.compute([too_long])


def test_401_is_one_line_naming_the_server_without_the_key(fake, tiny_chatml, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SERVED_KEY", SECRET)
    srv = fake("401")
    spec = f"openai:m@{srv.url}?server=vllm&template=hf:{tiny_chatml}&key_env=SERVED_KEY"
    err = score_fails_in_one_line(tmp_path, spec, monkeypatch, capsys)
    assert "HTTP 401" in err and "key_env" in err and SECRET not in err and "[REDACTED]" in err
    assert srv.requests[0]["auth"] == f"Bearer {SECRET}"  # key_env names the key: sent, even over http


def test_the_key_rule_is_the_same_for_teachers_and_students(monkeypatch):
    from teachfit.models import ModelSpec
    from teachfit.models.openai_api import OpenAIClient, OpenAITeacher

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OTHER_KEY", "sk-other")
    for cls in (OpenAIClient, OpenAITeacher):
        def auth(name):
            header = cls(ModelSpec.parse(f"openai:{name}"))._auth().get("Authorization")
            return header if isinstance(header, str) else None  # the SDK's Omit: no header at all

        assert auth("m@http://127.0.0.1:1/v1") is None
        assert auth("m@https://api.example.com/v1") == f"Bearer {SECRET}"
        assert auth("m@http://127.0.0.1:1/v1?key_env=OTHER_KEY") == "Bearer sk-other"
        with pytest.raises(ModelSpecError, match="MISSING_KEY is not set"):
            auth("m@https://api.example.com/v1?key_env=MISSING_KEY")


def test_llamacpp_offsets_line_up_or_the_pair_is_refused():
    from teachfit.score.adapters import Echo, llamacpp_span

    specials = ["<|im_end|>", "<|im_start|>"]
    sent = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n日本<|im_end|>"
    suffix = "日本<|im_end|>"
    # llama-cpp-python: special tokens' text left out; 日 in two byte tokens (the first decodes to
    # nothing, the offsets of whole prefixes do not move), 本 in one, <|im_end|> empty
    shown = "user\nhi\nassistant\n"
    texts = ["", "user", "\n", "hi", "", "\n", "", "assistant", "\n", "", "日", "本", ""]
    offsets = [0, 0, 4, 5, 7, 7, 8, 8, 17, 18, 18, 19, 20]
    echo = Echo(texts, offsets, [None] + [-1.0] * 12, len(shown) + 2, 14)
    assert llamacpp_span(echo, sent, suffix, specials) == [9, 10, 11, 12]
    echo.end += 1  # one character more than the text: refused, not shifted
    with pytest.raises(ValueError, match="do not line up"):
        llamacpp_span(echo, sent, suffix, specials)


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_served_max_length_is_the_servers_max_model_len_minus_one(kind, tiny_chatml, monkeypatch):
    """vLLM and SGLang list max_model_len on /v1/models and answer HTTP 400 to a prompt of that many
    tokens (the fake server does the same): teachfit cuts pairs to max_model_len - 1 before sending."""
    from teachfit.models import load

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    srv = FakeServer(owned_by=kind, max_model_len=40)
    try:
        options = ScoreConfig(progress=False, max_length=4096, metrics=["ppl_self"], max_retries=0)
        model = load("lm_scorer", f"openai:m@{srv.url}?template=hf:{tiny_chatml}", lm_role="self", options=options)
        assert model.max_length == 39 and model.describe()["server_max_model_len"] == 40
        [row] = model.compute([Pair(LONG["id"], LONG["instruction"], LONG["response"], "t")])
        assert row["truncated"]
        sent = [r["body"]["prompt" if kind == "vllm" else "input_ids"] for r in srv.requests if "body" in r]
        assert max(len(ids) for ids in sent) == 39 and "too_long" not in srv.modes()
    finally:
        srv.stop()


PREFIX_METRICS = ('# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n'
                  '# TYPE vllm:cache_config_info gauge\n'
                  'vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="%s",'
                  'gpu_memory_utilization="0.9"} 1.0\n')


def test_a_vllm_server_with_prefix_caching_is_refused_with_the_flag(tiny_chatml, monkeypatch):
    """vLLM issue 42019: prompt log-probabilities depend on request order with prefix caching on.
    vLLM publishes its CacheConfig on /metrics (vllm:cache_config_info): on is refused, off is
    recorded, and a server that does not say gets the flag in its notes."""
    from teachfit.models import load
    from teachfit.score.adapters import SERVER_FLAGS

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert "--no-enable-prefix-caching" in SERVER_FLAGS["vllm"]
    spec = "openai:m@{}?server=vllm&template=hf:" + str(tiny_chatml)
    options = ScoreConfig(progress=False, max_length=64, metrics=["ppl_self"], max_retries=0)
    for metrics, expected in ((PREFIX_METRICS % "True", "refused"), (PREFIX_METRICS % "False", False), (None, None)):
        srv = FakeServer(owned_by="vllm", metrics=metrics)
        try:
            if expected == "refused":
                with pytest.raises(ModelSpecError, match="--no-enable-prefix-caching") as error:
                    load("lm_scorer", spec.format(srv.url), lm_role="self", options=options)
                assert "issue 42019" in str(error.value) and "\n" not in str(error.value)
                assert not any("body" in r for r in srv.requests)  # refused before any scoring request
                continue
            described = load("lm_scorer", spec.format(srv.url), lm_role="self", options=options).describe()
            assert described["server_prefix_caching"] is expected
            assert any("--no-enable-prefix-caching" in n for n in described["notes"]) == (expected is None)
        finally:
            srv.stop()
