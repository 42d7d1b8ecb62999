"""llama.cpp's C++ llama-server returns no prompt log-probabilities with echo (llama.cpp issue
27174), so it cannot serve a student: teachfit recognises it by its /props (`build_info`,
`default_generation_settings`, as tools/server/server-context.cpp answers) and says so in one line,
before any scoring request. llama-cpp-python's server (no /props) and other servers are not taken
for it. A real HTTP server on 127.0.0.1 plays each."""

import pytest
from conftest import free_port, score_fails_in_one_line
from fake_openai_server import FakeServer

from teachfit.models import ModelSpec
from teachfit.models.openai_api import OpenAIClient
from teachfit.score.adapters import llama_server_build

# the keys llama-server's GET /props answers with (a few of them, values as a small build gives)
LLAMA_SERVER_PROPS = {"default_generation_settings": {"n_ctx": 4096, "params": {"n_predict": -1, "n_probs": 0}},
                      "total_slots": 1, "model_path": "/models/smol.gguf", "chat_template": "{{ messages }}",
                      "bos_token": "<s>", "eos_token": "</s>", "build_info": "b6500-1a2b3c4"}


@pytest.fixture
def servers():
    started = []

    def start(**options):
        started.append(FakeServer(**options))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


@pytest.mark.parametrize("server_option", ["", "server=llamacpp&"])
def test_llama_server_is_refused_in_one_line_before_scoring(servers, server_option, tiny_chatml, tmp_path,
                                                            monkeypatch, capsys):
    srv = servers(owned_by="llamacpp", props=LLAMA_SERVER_PROPS)
    spec = f"openai:smol@{srv.url}?{server_option}template=hf:{tiny_chatml}"
    err = score_fails_in_one_line(tmp_path, spec, monkeypatch, capsys)
    assert "llama-server (build b6500-1a2b3c4)" in err and "issue 27174" in err and "llama-cpp-python" in err
    assert srv.modes() == []  # refused before any completion request


def test_only_llama_server_props_are_taken_for_it(servers):
    def build(srv=None, url=None):
        return llama_server_build(OpenAIClient(ModelSpec("openai", f"m@{url or srv.url}"), max_retries=0))

    assert build(servers(owned_by="llamacpp", props=LLAMA_SERVER_PROPS)) == "b6500-1a2b3c4"
    assert build(servers(owned_by="me")) is None  # llama-cpp-python: /props is a 404
    assert build(servers(owned_by="vllm", props={"build_info": "x"})) is None  # not both of llama-server's keys
    assert build(servers(props=["not", "a", "mapping"])) is None
    assert build(url=f"http://127.0.0.1:{free_port()}/v1") is None  # nothing listening: not said to be one
