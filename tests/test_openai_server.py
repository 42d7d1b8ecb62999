"""The OpenAI-compatible backend against a real server on 127.0.0.1 (llama-cpp-python's server
with the packaged SmolLM2 GGUF): concurrency, retries across a server restart, resume, no key leaks."""
import json
import sys
import threading
import time

import pytest

from conftest import Server, free_port, write_pairs
from teachfit.generate import answer_all, parse_teacher
from teachfit.instructions import read_instructions
from teachfit.models import ModelSpec
from teachfit.models.base import GenerationSettings
from teachfit.models.openai_api import OpenAITeacher

pytestmark = pytest.mark.packaged("llama_cpp.server.app")  # the packaged SmolLM2 behind llama.cpp's server


@pytest.fixture(scope="module")
def server():
    srv = Server()
    srv.start()
    yield srv
    srv.stop()


class CountingTeacher(OpenAITeacher):
    """Records the most requests in flight at once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight, self.most, self.lock = 0, 0, threading.Lock()

    def _post_once(self, body):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            return super()._post_once(body)
        finally:
            with self.lock:
                self.in_flight -= 1


def items(tmp_path, n=6):
    path = write_pairs(tmp_path / "i.jsonl", [{"id": f"q{i}", "instruction": f"Name a color number {i}."} for i in range(n)])
    return read_instructions([path])


def test_concurrent_requests_bounded_and_recorded(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-do-not-write")
    teacher = CountingTeacher(ModelSpec("openai", f"smol@{server.url}"), concurrency=3)
    request = parse_teacher(f"openai:smol@{server.url}", GenerationSettings(max_new_tokens=8))
    stats = answer_all(items(tmp_path), request, tmp_path / "r.jsonl", lambda spec: teacher, show_progress=False)
    assert stats["generated"] == 6 and stats["errors"] == 0
    assert 1 <= teacher.most <= 3
    text = (tmp_path / "r.jsonl").read_text()
    assert "sk-test-secret" not in text
    records = [json.loads(l) for l in text.splitlines()]
    assert all(r["response"] and 0 < r["completion_tokens"] <= 8 for r in records)
    assert records[0]["backend"] == {"backend": "openai", "model": "smol", "base_url": server.url}


def test_retries_across_server_restart_then_resume(tmp_path, server):
    server.stop()
    teacher = OpenAITeacher(ModelSpec("openai", f"smol@{server.url}"), concurrency=2, backoff=0.25, max_backoff=2,
                            max_retries=30)
    request = parse_teacher(f"openai:smol@{server.url}", GenerationSettings(max_new_tokens=4))
    path = tmp_path / "r.jsonl"
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        answer_all(items(tmp_path, 4), request, path, lambda spec: teacher, show_progress=False)))
    worker.start()
    time.sleep(1.5)
    server.start()  # back up while requests are being retried
    worker.join(timeout=120)
    assert result["generated"] == 4 and result["errors"] == 0 and teacher.retries > 0
    # an interrupted run: drop two records, re-run, and only those two are asked for again
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")
    again = OpenAITeacher(ModelSpec("openai", f"smol@{server.url}"), concurrency=2)
    result = answer_all(items(tmp_path, 4), request, path, lambda spec: again, show_progress=False)
    assert result["generated"] == 2 and result["already_done"] == 2
    assert len(path.read_text().splitlines()) == 4


def test_unreachable_server_is_recorded_per_record_and_run_goes_on(tmp_path):
    teacher = OpenAITeacher(ModelSpec("openai", f"smol@http://127.0.0.1:{free_port()}/v1"), max_retries=1, backoff=0.01)
    request = parse_teacher("openai:smol@http://127.0.0.1:9/v1", GenerationSettings(max_new_tokens=4))
    stats = answer_all(items(tmp_path, 2), request, tmp_path / "r.jsonl", lambda spec: teacher, show_progress=False)
    records = [json.loads(l) for l in (tmp_path / "r.jsonl").open()]
    assert stats["errors"] == 2 and all("TransientError" in r["error"] or "URLError" in r["error"] or
                                        "ConnectionRefused" in r["error"] for r in records)
