"""The OpenAI-compatible backend against a misbehaving real HTTP server on 127.0.0.1: every
transport fault is retried, `content: null` is an error, timeouts are bounded and settable,
and the API key never reaches a stored or raised message."""
import os
import time

import pytest

from fake_openai_server import FakeServer
from teachfit.models import ModelSpec, load
from teachfit.models.base import GenerationSettings
from teachfit.models.openai_api import (DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, OpenAIClient, OpenAITeacher,
                                        TransientError, first_message, redact)

KEY = "sk-live-0123456789abcdefSECRET"
SETTINGS = GenerationSettings(max_new_tokens=8)
MESSAGES = [[{"role": "user", "content": "Say hello."}]]


@pytest.fixture
def server():
    srv = FakeServer(hang_seconds=1.5)
    yield srv
    srv.stop()


def teacher(server, **options):
    options = {"backoff": 0.01, "max_backoff": 0.02, "timeout": 0.5, "max_retries": 2, **options}
    # a plain-http server gets a key only when the spec names its variable (key_env: the one rule)
    named = (("key_env", "OPENAI_API_KEY"),) if os.environ.get("OPENAI_API_KEY") else ()
    return OpenAITeacher(ModelSpec("openai", f"m@{server.url}", named), concurrency=1, **options)


@pytest.mark.parametrize("fault", ["cut", "cut_json", "garbage", "hang", "null", "nochoices", "echo500"])
def test_each_fault_is_retried_then_answered(server, fault, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.script = [fault]
    client = teacher(server)
    [result] = client.generate(MESSAGES, SETTINGS, [0])
    assert result.error is None and result.text == "Hello there.", result.error
    assert server.modes() == [fault, "ok"] and client.retries == 1
    assert server.requests[0]["auth"] == f"Bearer {KEY}"  # the key is sent, as it must be


@pytest.mark.parametrize("fault", ["cut", "garbage", "hang", "null", "nochoices"])
def test_a_fault_that_persists_is_an_error_record_after_the_retries(server, fault):
    server.default = fault
    client = teacher(server, max_retries=2)
    started = time.perf_counter()
    [result] = client.generate(MESSAGES, SETTINGS, [0])
    assert result.error and "gave up after 3 attempts" in result.error and result.text == ""
    assert server.modes() == [fault] * 3
    assert time.perf_counter() - started < 10  # hang: 3 x 0.5 s timeouts, not 600 s x 7


def test_content_null_is_not_a_finished_empty_answer(server):
    server.default = "null"
    [result] = teacher(server, max_retries=0).generate(MESSAGES, SETTINGS, [0])
    assert result.error and "content null" in result.error and result.finish_reason == ""


def test_content_parts_are_joined(server):
    from fake_openai_server import completion

    server.reply = completion([{"type": "text", "text": "Hel"}, {"type": "image_url"}, {"type": "text", "text": "lo"}])
    [result] = teacher(server).generate(MESSAGES, SETTINGS, [0])
    assert result.error is None and result.text == "Hello"


@pytest.mark.parametrize("echo", ["echo401", "echo500", "echo200"])
def test_the_key_is_redacted_from_every_stored_error(server, echo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.default = echo
    [result] = teacher(server, max_retries=1).generate(MESSAGES, SETTINGS, [0])
    assert result.error and KEY not in result.error and KEY[:12] not in result.error, result.error
    if echo != "echo200":  # an error body is quoted, redacted; a 200 without choices is only described
        assert "[REDACTED]" in result.error
    assert server.requests[0]["auth"] == f"Bearer {KEY}"
    if echo == "echo401":  # not transient: asked once
        assert server.modes() == ["echo401"] and "HTTP 401" in result.error
    else:
        assert len(server.modes()) == 2
    # raised (not only stored) messages are redacted too
    with pytest.raises((TransientError, RuntimeError)) as caught:
        teacher(server, max_retries=0).post({"model": "m", "messages": MESSAGES[0]}, check=first_message)
    assert KEY not in str(caught.value)


def test_redact_and_settable_defaults(server):
    assert redact(f"Authorization: Bearer {KEY}!", KEY) == "Authorization: Bearer [REDACTED]!"
    assert redact("nothing to hide", None, "") == "nothing to hide"
    client = OpenAIClient(ModelSpec("openai", f"m@{server.url}"))
    assert (client.timeout, client.max_retries) == (DEFAULT_TIMEOUT, DEFAULT_MAX_RETRIES) == (120.0, 5)
    loaded = load("teacher", f"openai:m@{server.url}", timeout=7.5, max_retries=1, dtype="auto")
    assert (loaded.timeout, loaded.max_retries) == (7.5, 1)
    for bad in ({"timeout": 0}, {"timeout": float("nan")}, {"max_retries": -1}):
        with pytest.raises(ValueError):
            OpenAIClient(ModelSpec("openai", f"m@{server.url}"), **bad)


def test_a_batch_with_faults_loses_nothing(server):
    server.script = ["cut", "garbage", "ok", "null", "cut_json"]
    client = OpenAITeacher(ModelSpec("openai", f"m@{server.url}"), concurrency=3, backoff=0.01, max_backoff=0.02,
                           timeout=0.5, max_retries=3)
    results = client.generate(MESSAGES * 6, SETTINGS, list(range(6)))
    assert [r.error for r in results] == [None] * 6 and all(r.text == "Hello there." for r in results)
    assert len(server.requests) == 6 + 4  # every fault cost exactly one retry
