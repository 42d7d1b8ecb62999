"""The client on the `openai` SDK against a real HTTP server on 127.0.0.1: teachfit's key rule
decides the Authorization header (the SDK's own reading of OPENAI_API_KEY / OPENAI_ORG_ID /
OPENAI_PROJECT_ID does not reach a server), a server's own fields travel in `extra_body`, a 429's
retry-after is waited for, and a missing SDK names the extra."""
import sys
import time

import pytest

from fake_openai_server import FakeServer
from teachfit.models import ModelSpec
from teachfit.models.base import GenerationSettings
from teachfit.models.judges import OpenAIJudge
from teachfit.models.openai_api import OpenAIClient, OpenAITeacher, retry_after_seconds

MESSAGES = [[{"role": "user", "content": "Say hello."}]]


@pytest.fixture
def server():
    srv = FakeServer()
    yield srv
    srv.stop()


def test_sdk_environment_does_not_reach_a_plain_http_server(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-not-for-http")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-not-sent")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-not-sent")
    monkeypatch.setenv("NAMED_KEY", "sk-named")
    [plain] = OpenAITeacher(ModelSpec("openai", f"m@{server.url}")).generate(MESSAGES, GenerationSettings(), [0])
    [named] = OpenAITeacher(ModelSpec("openai", f"m@{server.url}", (("key_env", "NAMED_KEY"),))).generate(
        MESSAGES, GenerationSettings(), [0])
    assert plain.error is None and named.error is None
    first, second = server.requests
    assert "authorization" not in first["headers"] and second["headers"]["authorization"] == "Bearer sk-named"
    for request in (first, second):
        assert not {"openai-organization", "openai-project"} & set(request["headers"])


def test_judge_constraints_travel_as_extra_body(server):
    judge = OpenAIJudge(ModelSpec("openai", f"j@{server.url}"), constraint="grammar", max_retries=0)
    judge.ask(MESSAGES[0], max_tokens=4, temperature=0.0, options=["A", "B"], logprobs=True)
    guided = OpenAIJudge(ModelSpec("openai", f"j@{server.url}"), constraint="guided_choice", max_retries=0)
    guided.ask(MESSAGES[0], max_tokens=4, temperature=0.0, options=["A", "B"])
    sent, choice = (r["body"] for r in server.requests)
    assert sent["grammar"] == 'root ::= "A" | "B"' and sent["logprobs"] is True and sent["top_logprobs"] == 10
    assert choice["guided_choice"] == ["A", "B"] and "extra_body" not in sent and "grammar" not in choice


def test_a_429_retry_after_is_waited_for(server):
    assert retry_after_seconds({"retry-after-ms": "400"}) == 0.4
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "99999"}) is None and retry_after_seconds({}) is None
    server.script = ["wait429"]
    client = OpenAITeacher(ModelSpec("openai", f"m@{server.url}"), concurrency=1, backoff=0.01, max_backoff=0.02,
                           timeout=5, max_retries=2)
    started = time.perf_counter()
    [result] = client.generate(MESSAGES, GenerationSettings(max_new_tokens=4), [0])
    waited = time.perf_counter() - started
    assert result.error is None and server.modes() == ["wait429", "ok"] and client.retries == 1
    assert waited >= 0.4  # our own backoff alone would have waited at most 0.02 s


def test_a_missing_sdk_names_the_extra(server, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed: `import openai` fails
    with pytest.raises(ImportError, match=r"pip install 'teachfit\[openai\]'"):
        OpenAIClient(ModelSpec("openai", f"m@{server.url}"), max_retries=0)
    assert server.requests == []  # said before anything is sent
