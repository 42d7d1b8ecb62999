"""Provider batch APIs (openai-batch: teachers) against a real HTTP server on 127.0.0.1 that
implements /v1/files (upload, content) and /v1/batches (create, retrieve), with failed lines,
batches refused or expired with partial output, and a server or a run killed mid-batch."""
from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from teachfit.generate import generate, parse_teacher
from teachfit.instructions import read_instructions
from teachfit.models import ModelSpec, ModelSpecError, load
from teachfit.models.base import GenerationSettings
from teachfit.models.openai_batch import BatchAPIError
from teachfit.run import RunDir

FAST = {"batch_poll_interval": 0.02, "max_retries": 0, "timeout": 5.0}


def expected(body: dict) -> str:
    """What the fake provider answers to a request body (the test's independent computation)."""
    return f"answer to {body['messages'][-1]['content']!r} with seed {body['seed']}"


class Provider:
    """A batch provider's state (files, batches, counters); it outlives a server restart."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.uploads = self.creates = 0
        self.hold = False  # batches stay in_progress (or in `hold_status`)
        self.hold_status = "in_progress"
        self.fail_lines: dict[str, int] = {}  # custom_id -> times its line still fails (status 500)
        self.error_lines: dict[str, int] = {}  # custom_id -> times it still lands in the error file
        self.expire_after: int | None = None  # the next batch answers this many lines, then expires
        self.refuse_next = False  # the next batch fails validation as a whole
        self.cut_next_create = False  # the next batch is created, but its reply is lost (connection cut)
        self.lines: list[list[str]] = []  # custom_ids of each created batch
        self.polls, self.poll_limit = 0, 2000  # past the limit a poll is refused: a test fails, never hangs
        self.answer = expected  # body -> the answer's text
        self.sync_posts = 0  # requests to the synchronous /v1/chat/completions
        self.auth: list[str | None] = []
        self.scoped: set[str] = set()  # OpenAI-Organization / OpenAI-Project headers seen
        self.lock = threading.Lock()

    def add_file(self, data: bytes) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = data
        return file_id

    def completion(self, body: dict) -> dict:
        return {"id": "c", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": self.answer(body)}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5}}

    def finish(self, batch: dict) -> None:
        """Run a batch: answer, fail or expire each line, write the output and error files."""
        requests = [json.loads(l) for l in self.files[batch["input_file_id"]].decode().splitlines()]
        if self.refuse_next:
            self.refuse_next = False
            batch.update(status="failed", errors={"object": "list", "data": [{"code": "invalid", "message": "bad file"}]})
            return
        limit, status = len(requests), "completed"
        if self.expire_after is not None:
            limit, status, self.expire_after = self.expire_after, "expired", None
        out, err = [], []
        for k, request in enumerate(requests):
            cid, body = request["custom_id"], request["body"]
            if k >= limit:
                err.append({"id": f"r{k}", "custom_id": cid, "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed before the "
                                                                          "completion window expired."}})
            elif self.error_lines.get(cid, 0) > 0:
                self.error_lines[cid] -= 1
                err.append({"id": f"r{k}", "custom_id": cid, "response": None,
                            "error": {"code": "server_error", "message": f"no luck (auth {batch['auth']})"}})
            elif self.fail_lines.get(cid, 0) > 0:
                self.fail_lines[cid] -= 1
                out.append({"id": f"r{k}", "custom_id": cid, "error": None,
                            "response": {"status_code": 500, "body": {"error": {"message": f"boom (auth {batch['auth']})"}}}})
            else:
                out.append({"id": f"r{k}", "custom_id": cid, "error": None,
                            "response": {"status_code": 200, "request_id": f"q{k}", "body": self.completion(body)}})
        out.reverse()  # results in any order: custom_id maps them back
        batch.update(status=status, output_file_id=self.add_file("\n".join(map(json.dumps, out)).encode()) if out else None,
                     error_file_id=self.add_file("\n".join(map(json.dumps, err)).encode()) if err else None,
                     request_counts={"total": len(requests), "completed": len(out), "failed": len(err)})


class BatchServer:
    """Real HTTP on 127.0.0.1 in a thread, serving a Provider; restartable on the same port."""

    def __init__(self, provider: Provider, port: int = 0):
        self.provider, self.connections = provider, set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                server.connections.add(self.connection)

            def reply(self, code: int, payload) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with provider.lock:
                    provider.auth.append(self.headers.get("Authorization"))
                    provider.scoped.update(h for h in ("OpenAI-Organization", "OpenAI-Project") if h in self.headers)
                    if self.path == "/v1/files":
                        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                        parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                                 for p in message.iter_parts()}
                        assert parts["purpose"] == b"batch"
                        provider.uploads += 1
                        file_id = provider.add_file(parts["file"])
                        return self.reply(200, {"id": file_id, "object": "file", "bytes": len(parts["file"]),
                                                "created_at": 1, "filename": "x.jsonl", "purpose": "batch"})
                    if self.path == "/v1/chat/completions":
                        provider.sync_posts += 1
                        return self.reply(200, provider.completion(json.loads(raw)))
                    if self.path == "/v1/batches":
                        body = json.loads(raw)
                        provider.creates += 1
                        batch_id = f"batch_{provider.creates}"
                        provider.lines.append([json.loads(l)["custom_id"]
                                               for l in provider.files[body["input_file_id"]].decode().splitlines()])
                        provider.batches[batch_id] = {
                            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "status": "validating",
                            "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                            "created_at": 1, "auth": self.headers.get("Authorization")}
                        if provider.cut_next_create:
                            provider.cut_next_create = False
                            self.close_connection = True
                            return self.connection.shutdown(socket.SHUT_RDWR)
                        return self.reply(200, {k: v for k, v in provider.batches[batch_id].items() if k != "auth"})
                self.reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self):
                with provider.lock:
                    provider.auth.append(self.headers.get("Authorization"))
                    parts = self.path.split("?")[0].strip("/").split("/")
                    if parts == ["v1", "batches"]:  # the list, most recent first
                        listed = [{k: v for k, v in b.items() if k != "auth"} for b in reversed(provider.batches.values())]
                        return self.reply(200, {"object": "list", "data": listed, "has_more": False})
                    if parts[:2] == ["v1", "batches"] and parts[2] in provider.batches:
                        provider.polls += 1
                        if provider.polls > provider.poll_limit:
                            return self.reply(400, {"error": {"message": "poll limit of the test reached"}})
                        batch = provider.batches[parts[2]]
                        if batch["status"] == "validating":
                            batch["status"] = provider.hold_status if provider.hold else "in_progress"
                        elif batch["status"] in ("in_progress", provider.hold_status) and not provider.hold:
                            provider.finish(batch)
                        return self.reply(200, {k: v for k, v in batch.items() if k != "auth"})
                    if parts[:2] == ["v1", "files"] and parts[-1] == "content" and parts[2] in provider.files:
                        return self.reply(200, provider.files[parts[2]])
                self.reply(404, {"error": {"message": f"no route {self.path}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection (a client's kept-alive one included)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def provider():
    return Provider()


@pytest.fixture
def server(provider):
    srv = BatchServer(provider)
    yield srv
    srv.stop()


def instructions(tmp_path, n=5):
    path = tmp_path / "i.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Say {i}."}) + "\n" for i in range(n)))
    return read_instructions([path])


def records(run: RunDir, name: str) -> list[dict]:
    return [json.loads(l) for l in run.responses(name).read_text().splitlines()]


def check_answers(rows: list[dict], request) -> None:
    """Every record holds the answer to its own instruction and seed (whatever the result order)."""
    for row in rows:
        seed = request.settings.sample_seed(row["instruction_id"], row["sample"])
        assert row["response"] == expected({"messages": [{"content": row["instruction"]}], "seed": seed})


def test_every_missing_answer_in_one_batch_then_nothing_to_do(tmp_path, server, provider, monkeypatch):
    for name, value in {"OPENAI_API_KEY": "sk-never-to-localhost", "OPENAI_ORG_ID": "org-x", "OPENAI_PROJECT_ID": "p"}.items():
        monkeypatch.setenv(name, value)
    items = instructions(tmp_path)
    request = parse_teacher(f"openai:m@{server.url}?batch=1&n=2&temperature=0.7", GenerationSettings(max_new_tokens=16))
    assert request.spec == f"openai-batch:m@{server.url}"
    run = RunDir(tmp_path / "run")
    [stats] = generate(items, [request], run, FAST, show_progress=False)
    assert stats["generated"] == 10 and stats["errors"] == 0
    assert provider.uploads == 1 and provider.creates == 1 and len(provider.lines[0]) == 10
    assert sorted(provider.lines[0]) == sorted(f"q{i}#s{k}" for i in range(5) for k in range(2))
    rows = records(run, request.name)
    assert [(r["instruction_id"], r["sample"]) for r in rows] == [(f"q{i}", k) for i in range(5) for k in range(2)]
    check_answers(rows, request)
    assert {r["backend"]["backend"] for r in rows} == {"openai-batch"} and rows[0]["completion_tokens"] == 5
    assert set(provider.auth) == {None} and not provider.scoped  # plain http: no key, not even OPENAI_API_KEY
    state = json.loads(run.batch_state(request.name).read_text())
    assert [b["id"] for b in state["batches"]] == ["batch_1"] and state["batches"][0]["collected"]
    [again] = generate(items, [request], run, FAST, show_progress=False)
    assert again["already_done"] == 10 and again["generated"] == 0 and provider.uploads == 1


def test_failed_lines_go_out_again_then_become_error_records(tmp_path, server, provider, monkeypatch):
    monkeypatch.setenv("BATCH_KEY", "sk-batch-secret-123")
    provider.fail_lines = {"q1#s0": 1, "q3#s0": 99}  # q1 fails once, q3 always
    provider.error_lines = {"q2#s0": 1}
    request = parse_teacher(f"openai-batch:m@{server.url}?key_env=BATCH_KEY", GenerationSettings(max_new_tokens=16))
    run = RunDir(tmp_path / "run")
    [stats] = generate(instructions(tmp_path), [request], run, FAST | {"batch_retries": 2}, show_progress=False)
    assert stats["generated"] == 4 and stats["errors"] == 1
    # batch 1: all 5; batch 2: the 3 failed (retry 1); batch 3: q3 alone (retry 2), then an error record
    assert [sorted(lines) for lines in provider.lines] == [
        [f"q{i}#s0" for i in range(5)], ["q1#s0", "q2#s0", "q3#s0"], ["q3#s0"]]
    assert provider.uploads == 3 and set(provider.auth) == {"Bearer sk-batch-secret-123"}
    rows = records(run, request.name)
    assert len(rows) == 5
    check_answers([r for r in rows if not r["error"]], request)
    [failed] = [r for r in rows if r["error"]]
    assert failed["instruction_id"] == "q3" and "HTTP 500: boom" in failed["error"] and "gave up after 3 batches" in failed["error"]
    text = run.responses(request.name).read_text() + run.batch_state(request.name).read_text()
    assert "sk-batch-secret-123" not in text and "[REDACTED]" in failed["error"]
    provider.fail_lines.clear()  # a re-run tries the error again, in a fresh batch
    [again] = generate(instructions(tmp_path), [request], run, FAST, show_progress=False)
    assert again["generated"] == 1 and again["errors"] == 0 and provider.lines[-1] == ["q3#s0"]


def test_expired_batch_keeps_its_partial_output_and_sends_the_rest(tmp_path, server, provider):
    provider.expire_after = 2
    request = parse_teacher(f"openai-batch:m@{server.url}", GenerationSettings(max_new_tokens=16))
    run = RunDir(tmp_path / "run")
    [stats] = generate(instructions(tmp_path), [request], run, FAST, show_progress=False)
    assert stats["generated"] == 5 and stats["errors"] == 0
    assert provider.batches["batch_1"]["status"] == "expired"
    assert sorted(provider.lines[1]) == sorted(provider.lines[0][2:])  # only the unanswered go out again
    rows = records(run, request.name)
    assert len(rows) == 5 and not any(r["error"] for r in rows)
    check_answers(rows, request)


def test_batch_refused_as_a_whole_is_sent_again(tmp_path, server, provider):
    provider.refuse_next = True
    request = parse_teacher(f"openai-batch:m@{server.url}", GenerationSettings(max_new_tokens=16))
    [stats] = generate(instructions(tmp_path, 3), [request], RunDir(tmp_path / "run"), FAST, show_progress=False)
    assert stats["generated"] == 3 and [len(lines) for lines in provider.lines] == [3, 3]


def test_server_killed_mid_batch_then_a_rerun_polls_the_same_batch(tmp_path, server, provider):
    provider.hold = True
    request = parse_teacher(f"openai-batch:m@{server.url}", GenerationSettings(max_new_tokens=16))
    run = RunDir(tmp_path / "run")

    def kill_when_submitted():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (provider.creates and run.batch_state(request.name).exists()):
            time.sleep(0.01)
        server.stop()

    killer = threading.Thread(target=kill_when_submitted)
    killer.start()
    with pytest.raises(BatchAPIError, match="poll batch batch_1 .*recorded in"):
        generate(instructions(tmp_path), [request], run, FAST, show_progress=False)
    killer.join()
    assert not run.responses(request.name).exists() or not records(run, request.name)
    provider.hold = False
    restarted = BatchServer(provider, port=server.port)
    try:
        [stats] = generate(instructions(tmp_path), [request], run, FAST, show_progress=False)
    finally:
        restarted.stop()
    assert stats["generated"] == 5 and provider.uploads == 1 and provider.creates == 1
    check_answers(records(run, request.name), request)


def test_a_lost_reply_to_create_batch_is_found_again_not_paid_twice(tmp_path, server, provider):
    provider.cut_next_create = True
    request = parse_teacher(f"openai-batch:m@{server.url}", GenerationSettings(max_new_tokens=16))
    run = RunDir(tmp_path / "run")
    with pytest.raises(BatchAPIError, match="create batch"):
        generate(instructions(tmp_path), [request], run, FAST | {"max_retries": 3}, show_progress=False)
    assert provider.creates == 1  # the provider made it; the client never heard
    [entry] = json.loads(run.batch_state(request.name).read_text())["batches"]
    assert entry["id"] is None and entry["input_file_id"] == "file-1"
    [stats] = generate(instructions(tmp_path), [request], run, FAST, show_progress=False)
    assert stats["generated"] == 5 and provider.uploads == 1 and provider.creates == 1
    check_answers(records(run, request.name), request)


def test_a_status_unknown_to_teachfit_is_waited_on_and_a_batch_the_provider_forgot_goes_out_again(tmp_path, server,
                                                                                                     provider):
    provider.hold, provider.hold_status, provider.poll_limit = True, "queued", 5  # then polls are refused
    request = parse_teacher(f"openai-batch:m@{server.url}", GenerationSettings(max_new_tokens=16))
    run = RunDir(tmp_path / "run")
    with pytest.raises(BatchAPIError, match="poll limit"):
        generate(instructions(tmp_path), [request], run, FAST, show_progress=False)
    assert provider.creates == 1 and provider.polls == 6  # 'queued' is not finished: waited on, not sent again
    provider.batches.clear()  # the provider no longer knows batch_1 (404)
    provider.hold, provider.poll_limit = False, 2000
    [stats] = generate(instructions(tmp_path), [request], run, FAST, show_progress=False)
    assert stats["generated"] == 5 and provider.uploads == 2 and provider.creates == 2
    check_answers(records(run, request.name), request)


def test_killed_run_resumes_its_batch_without_uploading_again(tmp_path, server, provider):
    """A real SIGKILL of `teachfit generate` while its batch runs; the next run pays nothing more."""
    provider.hold = True
    source = tmp_path / "i.jsonl"
    instructions(tmp_path)
    out = tmp_path / "run"
    spec = f"openai:m@{server.url}?batch=1"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    process = subprocess.Popen([sys.executable, "-m", "teachfit.cli", "generate", "--instructions", str(source),
                                "--teacher", spec, "--out", str(out), "--batch-poll-interval", "0.05",
                                "--max-retries", "0", "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and \
                not (RunDir(out).batch_state("m").exists() and len(provider.auth) >= 4):  # upload, create, 2 polls
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert provider.uploads == 1 and provider.batches["batch_1"]["status"] == "in_progress"
    provider.hold = False
    request = parse_teacher(spec, GenerationSettings(max_new_tokens=1024))
    [stats] = generate(instructions(tmp_path), [request], RunDir(out), FAST, show_progress=False)
    assert stats["generated"] == 5 and provider.uploads == 1 and provider.creates == 1
    check_answers(records(RunDir(out), "m"), request)


def test_batch_judge_sends_every_first_attempt_in_one_batch(tmp_path, server, provider):
    """Arena-Hard judging through a batch judge: both orders of every prompt in one batch; an
    unparsable verdict is retried at once on the synchronous endpoint; a re-run is all cache."""
    from teachfit.evaluate.bench import BenchItem
    from teachfit.evaluate.judging import JudgeConfig
    from teachfit.evaluate.pairwise import Judgments, judge_arena_hard

    provider.answer = lambda body: "hmm" if "Q1?" in body["messages"][-1]["content"] and body["temperature"] == 0 \
        else "[[A>B]]"
    items = [BenchItem(f"b{i}", f"Q{i}?", baseline=f"base {i}") for i in range(3)]
    answers = {i.id: f"mine {i.id}" for i in items}
    judge = load("judge", f"openai-batch:m@{server.url}", constraint="none", **FAST)

    def judged():
        return judge_arena_hard(items, answers, Judgments(judge, JudgeConfig.load("arena_hard"), tmp_path / "cache"))

    games = [g for row in judged() for g in row["games"]]
    assert provider.uploads == 1 and len(provider.lines[0]) == 6 and provider.sync_posts == 2
    assert [g["verdict"] for g in games] == ["A>B"] * 6  # model first in game 2: scores 1, 0 per prompt
    assert [g["attempts"] for g in games] == [1, 1, 2, 2, 1, 1]
    assert [g["score"] for g in games] == [0.0, 1.0] * 3
    again = [g for row in judged() for g in row["games"]]
    assert all(g["cached"] for g in again) and provider.uploads == 1 and provider.sync_posts == 2


def test_batch_judge_replies_survive_a_run_killed_before_its_judgments_are_cached(tmp_path, server, provider,
                                                                                 monkeypatch):
    """The batch is collected (its replies paid for), then the run dies before any judgment is
    cached: the next run, a fresh judge, takes the replies from their durable copy beside the
    batch state and pays nothing again."""
    from teachfit.evaluate.bench import BenchItem
    from teachfit.evaluate.judging import JudgeConfig
    from teachfit.evaluate.pairwise import Judgments, judge_arena_hard

    provider.answer = lambda body: "[[A>B]]"
    items = [BenchItem(f"b{i}", f"Q{i}?", baseline=f"base {i}") for i in range(3)]
    answers = {i.id: f"mine {i.id}" for i in items}

    def judged():
        judge = load("judge", f"openai-batch:m@{server.url}", constraint="none", **FAST)
        return judge_arena_hard(items, answers, Judgments(judge, JudgeConfig.load("arena_hard"), tmp_path / "cache"))

    def killed(self, job):
        raise KeyboardInterrupt  # the run dies after the batch was collected, before caching

    with monkeypatch.context() as patch:
        patch.setattr(Judgments, "_one", killed)
        with pytest.raises(KeyboardInterrupt):
            judged()
    [state_file] = (tmp_path / "cache").rglob("batches.json")
    state = json.loads(state_file.read_text())
    assert provider.uploads == 1 and state["batches"][0]["collected"]
    games = [g for row in judged() for g in row["games"]]
    assert provider.uploads == 1 and provider.creates == 1 and provider.sync_posts == 0
    assert [g["verdict"] for g in games] == ["A>B"] * 6 and not any(g["cached"] for g in games)


def test_odd_provider_lines_and_a_refused_create(tmp_path, server, provider, monkeypatch):
    """An output line whose response is not an object is a failed line, sent again (no crash); a
    create the provider refuses (4xx) is given up in the state, so a re-run uploads afresh."""
    from teachfit.models.openai_batch import BatchClient

    original = Provider.finish

    def odd_first(self, batch):
        original(self, batch)
        if self.creates == 1:  # the first batch's first line: a string where the response object goes
            data = self.files[batch["output_file_id"]].decode().splitlines()
            row = json.loads(data[0])
            row["response"] = "garbled"
            self.files[batch["output_file_id"]] = "\n".join([json.dumps(row)] + data[1:]).encode()

    monkeypatch.setattr(Provider, "finish", odd_first)
    request = parse_teacher(f"openai-batch:m@{server.url}", GenerationSettings(max_new_tokens=16))
    run = RunDir(tmp_path / "run")
    [stats] = generate(instructions(tmp_path, 3), [request], run, FAST, show_progress=False)
    assert stats["generated"] == 3 and stats["errors"] == 0 and [len(lines) for lines in provider.lines] == [3, 1]

    client = BatchClient(ModelSpec.parse(f"openai-batch:m@{server.url}"), **{"poll_interval": 0.02, "timeout": 5.0})
    state_path = tmp_path / "refused.json"
    bodies = {"a": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1}}
    monkeypatch.setattr(client._no_retry.batches, "create", lambda **kw: (_ for _ in ()).throw(
        client._openai.BadRequestError("too large", response=__import__("httpx2").Response(
            400, request=__import__("httpx2").Request("POST", server.url)), body=None)))
    with pytest.raises(BatchAPIError, match="too large") as refused:
        client.run_bodies(bodies, state_path, lambda replies: None)
    assert refused.value.refused
    entry = json.loads(state_path.read_text())["batches"][0]
    assert entry["status"] == "refused" and entry["collected"]


def test_requests_are_grouped_under_the_line_and_byte_limits(monkeypatch):
    from teachfit.models import openai_batch

    client = openai_batch.BatchClient.__new__(openai_batch.BatchClient)
    client.max_requests = 3
    bodies = {f"r{i}": {"text": "x" * 1000} for i in range(8)}
    assert [len(g) for g in client._groups(list(bodies), bodies)] == [3, 3, 2]
    line = len(json.dumps(bodies["r0"]).encode()) + 100
    monkeypatch.setattr(openai_batch, "MAX_BATCH_BYTES", 2 * line)
    client.max_requests = 50
    assert [len(g) for g in client._groups(list(bodies), bodies)] == [2, 2, 2, 2]


def test_unreachable_batch_api_is_one_line_on_the_command_line(tmp_path):
    instructions(tmp_path, 1)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "teachfit.cli", "generate", "--instructions", str(tmp_path / "i.jsonl"),
                             "--teacher", f"openai-batch:m@http://127.0.0.1:{port}/v1", "--out", str(tmp_path / "run"),
                             "--max-retries", "0", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: BatchAPIError: http://127.0.0.1:{port}/v1: upload: "
                                                  "APIConnectionError: Connection error."]


def test_spec_spellings_and_refusals(monkeypatch):
    assert ModelSpec.parse("openai:m@https://api.example.com/v1?batch=true&key_env=K") == \
        ModelSpec("openai-batch", "m@https://api.example.com/v1", (("key_env", "K"),))
    assert str(ModelSpec.parse("openai:m@https://h/v1?batch=0")) == "openai:m@https://h/v1"
    with pytest.raises(ModelSpecError, match="with batch=1 the only other option is key_env"):
        ModelSpec.parse("openai:m@https://h/v1?batch=1&server=vllm")
    with pytest.raises(ModelSpecError, match="https://"):
        load("teacher", "openai-batch:m@http://example.com/v1")
    monkeypatch.delenv("MISSING_KEY", raising=False)
    with pytest.raises(ModelSpecError, match="MISSING_KEY is not set"):
        load("teacher", "openai-batch:m@https://h/v1?key_env=MISSING_KEY")
