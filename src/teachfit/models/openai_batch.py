"""A provider's batch API, OpenAI's /v1/files and /v1/batches (half price at hosted providers,
answers within the completion window instead of at once): the resumable loop that teachers
(models/batch_teacher.py) and judges (models/batch_judge.py) share.

Spec: openai-batch:<model>@<base_url>, or openai:<model>@<base_url>?batch=1 (parsed into the
same spec). The key rules are the openai: ones (openai_api.key_env_for; `?key_env=NAME`), and the
URL must be https:// unless the server is on this machine (127.0.0.1, localhost, ::1).

Request bodies go out as one batch per MAX_REQUESTS_PER_BATCH; each request line's custom_id is
the caller's key (generate: `<instruction id>#s<sample>`), so results map back whatever their
order. The state file (RUN/.batches/<dataset>.json for generate, RunDir owns it) records each
upload, then its batch id, with the requests and their body digests, *before* the first poll, so
a killed run polls its batches on the next start instead of paying twice (a batch whose creation
reply was lost is looked up among the provider's recent batches by its input file; creation is
never retried blindly); a batch is marked collected only after its replies were delivered
(generate writes and fsyncs them). Only completed, expired, cancelled and failed batches are
finished; an expired or cancelled one gives its partial output and the rest is sent again, as
are the requests of a batch the provider no longer knows (404); failed lines (the error file, a
status_code other than 200, a malformed body) go out again in a new batch up to `batch_retries`
times, then are delivered as errors (a later re-run tries them afresh).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

from teachfit.atomic import write_json_atomic
from teachfit.env import require
from teachfit.models.openai_api import (DEFAULT_KEY_ENV, auth_headers, completion_choice, key_env_for,
                                        parse_openai_spec, redact, sdk_client)
from teachfit.models.spec import ModelSpec, ModelSpecError

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_REQUESTS_PER_BATCH = 50_000  # OpenAI's limit of request lines per batch
MAX_BATCH_BYTES = 190_000_000  # under OpenAI's 200 MB limit of a batch's input file
FINISHED = {"completed", "expired", "cancelled", "failed"}  # any other status: still running
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

Reply = dict[str, Any] | str  # a chat completion as the provider returned it, or why there is none


def batch_options(options: dict[str, Any]) -> dict[str, Any]:
    """The BatchClient keyword options among a loader's options (the command line's
    batch_poll_interval is the client's poll_interval)."""
    renamed = {"batch_poll_interval": "poll_interval"}
    keys = ("max_retries", "timeout", "poll_interval", "batch_retries", "api_key_env")
    return {renamed.get(k, k): v for k, v in options.items() if renamed.get(k, k) in keys}


class BatchAPIError(OSError):
    """The batch API could not be reached or refused a call (after the SDK's own retries); an
    OSError, so the command line says it in one line (exit 2), like other services out of reach.
    `refused`: the provider answered 4xx (not 408/429), so the same call would be refused again."""

    refused = False


def body_digest(body: dict[str, Any]) -> str:
    """A short hash of one request body: a recorded batch answers a request only if it matches."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class BatchState:
    """The batches submitted for one dataset, in a JSON file written atomically (None: in memory)."""

    def __init__(self, path: Path | None):
        self.path = path
        data: Any = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError(type(data).__name__)
            except ValueError:
                raise BatchAPIError(f"{path}: not a batch state file (torn or edited); "
                                    "move it away to submit the missing answers again") from None
        self.batches: list[dict[str, Any]] = list(data.get("batches", []))
        self.failures: dict[str, dict[str, Any]] = dict(data.get("failures", {}))

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, {"version": 1, "batches": self.batches, "failures": self.failures})

    def failed(self, custom_id: str, digest: str, message: str) -> int:
        """Count one more failure of a request (a changed request starts at zero); returns the count."""
        entry = self.failures.get(custom_id)
        count = entry["count"] + 1 if entry and entry.get("digest") == digest else 1
        self.failures[custom_id] = {"digest": digest, "count": count, "error": message}
        return count


class BatchClient:
    """Chat completions through the provider's batch API, resumable (see the module docstring)."""

    check = staticmethod(completion_choice)  # a reply that fails it is a failed line (sent again)

    def __init__(self, spec: ModelSpec, max_retries: int = 5, timeout: float = 120.0, poll_interval: float = 30.0,
                 batch_retries: int = 2, max_requests: int = MAX_REQUESTS_PER_BATCH, api_key_env: str | None = None):
        openai = require("openai", "openai")
        self.spec, self._openai = spec, openai
        self.model, self.base_url = parse_openai_spec(spec.name)
        if not self.base_url.startswith("https://") and urlparse(self.base_url).hostname not in LOCAL_HOSTS:
            raise ModelSpecError(f"{spec}: a batch API is reached over https:// (plain http only on this machine)")
        if not (isinstance(poll_interval, (int, float)) and 0 < poll_interval < float("inf")):
            raise ModelSpecError(f"batch poll interval must be a number of seconds > 0, got {poll_interval!r}")
        self.poll_interval, self.batch_retries, self.max_requests = float(poll_interval), batch_retries, max_requests
        key_env = key_env_for(spec, self.base_url, api_key_env)
        self._key = os.environ.get(key_env) if key_env else None
        self._headers = auth_headers(self._key)  # per request: the key, or no Authorization header at all
        self.client, self._no_retry = (sdk_client(self.base_url, timeout, max_retries=retries) for retries in (max_retries, 0))
        self.uploads = 0  # files uploaded, for reports and tests

    def redact(self, text: str) -> str:
        """`text` without the API key."""
        return redact(text, self._key, os.environ.get(DEFAULT_KEY_ENV))

    def _call(self, what: str, function: Callable[..., Any], *args: Any, if_missing: Any = None, **kwargs: Any) -> Any:
        """function(*args, **kwargs) with the key rules; an API error becomes a BatchAPIError
        (a 404 returns `if_missing` instead, when given)."""
        try:
            return function(*args, extra_headers=self._headers, **kwargs)
        except self._openai.NotFoundError as error:
            if if_missing is not None:
                return if_missing
            raise BatchAPIError(self.redact(f"{self.base_url}: {what}: {type(error).__name__}: {error}")[:400]) from None
        except self._openai.APIError as error:
            failure = BatchAPIError(self.redact(f"{self.base_url}: {what}: {type(error).__name__}: {error}")[:400])
            status = getattr(error, "status_code", None)
            failure.refused = isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)
            raise failure from None

    # ---- one batch -----------------------------------------------------------------------
    def submit(self, custom_ids: Sequence[str], bodies: dict[str, dict[str, Any]], state: BatchState) -> None:
        """Upload the requests as a JSONL file and create its batch, each step recorded in `state`
        as soon as it is done."""
        lines = [json.dumps({"custom_id": c, "method": "POST", "url": ENDPOINT, "body": bodies[c]}, ensure_ascii=False)
                 for c in custom_ids]
        data = ("\n".join(lines) + "\n").encode()
        upload = self._call("upload", self.client.files.create, file=("teachfit-batch.jsonl", data, "application/jsonl"),
                            purpose="batch")
        self.uploads += 1
        state.batches.append({"id": None, "input_file_id": upload.id, "base_url": self.base_url, "status": "uploaded",
                              "collected": False, "requests": {c: body_digest(bodies[c]) for c in custom_ids}})
        state.save()  # a run killed before the batch id is known uses this upload again
        self.create(state.batches[-1], state)

    def create(self, entry: dict[str, Any], state: BatchState) -> None:
        """Give a recorded upload its batch: the one the provider already made from it when an
        earlier try's reply was lost (a kill, a cut connection), else a new one (never retried
        blindly: a lost reply would pay twice); the id is recorded before the first poll."""
        if entry.get("create_tried"):
            recent = self._call("list batches", self.client.batches.list, limit=100).data
            found = next((b for b in recent if b.input_file_id == entry["input_file_id"]), None)
            if found is not None:
                entry.update(id=found.id, status=found.status)
                return state.save()
        entry["create_tried"] = True
        state.save()
        try:
            batch = self._call("create batch", self._no_retry.batches.create, input_file_id=entry["input_file_id"],
                               endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW)
        except BatchAPIError as error:
            if error.refused:  # given up, so a re-run uploads its requests afresh instead of asking again
                entry.update(status="refused", collected=True)
                state.save()
            raise
        entry.update(id=batch.id, status=batch.status)
        state.save()

    def poll(self, batch_id: str, state_path: Path | None) -> Any:
        """The provider's batch object; one it does not know (404: deleted, another account) is
        finished with nothing answered, so its requests go out again."""
        unknown = SimpleNamespace(id=batch_id, status="cancelled", output_file_id=None, error_file_id=None)
        return self._call(f"poll batch {batch_id} (recorded in {state_path}: a re-run picks it up)",
                          self.client.batches.retrieve, batch_id, if_missing=unknown)

    def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        text = self._call(f"download {file_id}", self.client.files.content, file_id).text
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short counts as unanswered
            if isinstance(row, dict) and isinstance(row.get("custom_id"), str):
                rows.append(row)
        return rows

    def results(self, batch: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str], str]:
        """A finished batch's answers and failures by custom_id, and why a request in neither was
        not answered (the batch expired, was cancelled, or was refused as a whole)."""
        answers: dict[str, dict[str, Any]] = {}
        failures: dict[str, str] = {}
        for row in self._lines(batch.output_file_id) + self._lines(batch.error_file_id):
            custom_id, response = row["custom_id"], row.get("response")
            response = response if isinstance(response, dict) else {}  # an odd line is a failed line, sent again
            status, body = response.get("status_code"), response.get("body")
            if row.get("error") or status != 200:
                failures[custom_id] = self.redact(_failure_text(row.get("error"), status, body))
                continue
            try:
                self.check(body)
            except (RuntimeError, AttributeError, TypeError) as error:
                failures[custom_id] = self.redact(f"{type(error).__name__}: {error}")[:300]
                continue
            answers[custom_id] = body
        unanswered = f"not answered (batch {batch.id} {batch.status})"
        if batch.status == "failed":  # refused as a whole (validation)
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            why = "; ".join(str(getattr(e, "message", e)) for e in errors)[:300] or "no reason given"
            unanswered = self.redact(f"batch {batch.id} failed: {why}")
        return answers, failures, unanswered

    # ---- every request -------------------------------------------------------------------
    def _groups(self, custom_ids: Sequence[str], bodies: dict[str, dict[str, Any]]) -> Iterator[list[str]]:
        """The requests in batches of at most `max_requests` lines and MAX_BATCH_BYTES of input file."""
        group: list[str] = []
        size = 0
        for custom_id in custom_ids:
            line = len(json.dumps(bodies[custom_id], ensure_ascii=False).encode()) + 100  # + the line's own fields
            if group and (len(group) >= self.max_requests or size + line > MAX_BATCH_BYTES):
                yield group
                group, size = [], 0
            group.append(custom_id)
            size += line
        if group:
            yield group

    def run_bodies(self, bodies: dict[str, dict[str, Any]], state_path: Path | None,
                   deliver: Callable[[list[tuple[str, Reply]]], None]) -> None:
        """Send every request body (by custom_id) through batches, resuming the ones recorded in
        `state_path`; `deliver([(custom_id, reply or final error)])` is called once per batch."""
        digests = {c: body_digest(b) for c, b in bodies.items()}
        state, wanted = BatchState(state_path), set(bodies)

        def serves(batch: dict[str, Any]) -> list[str]:  # the wanted requests a recorded batch answers
            if batch.get("collected") or batch.get("base_url") != self.base_url:
                return []
            return [c for c, d in batch.get("requests", {}).items() if c in wanted and digests.get(c) == d]

        while True:
            pending = [b for b in state.batches if serves(b)]
            in_flight = {c for b in pending for c in serves(b)}
            waiting = [c for c in bodies if c in wanted and c not in in_flight]
            for entry in pending:
                if entry.get("id") is None:  # uploaded, but the batch id never came back
                    self.create(entry, state)
            for group in self._groups(waiting, bodies):
                self.submit(group, bodies, state)
                pending.append(state.batches[-1])
            if not pending:
                return
            finished = 0
            for entry in pending:
                batch = self.poll(entry["id"], state_path)
                entry["status"] = batch.status
                if batch.status not in FINISHED:
                    continue
                finished += 1
                self._collect(entry, batch, serves(entry), digests, state, wanted, deliver)
            if not finished:
                time.sleep(self.poll_interval)

    def _collect(self, entry: dict[str, Any], batch: Any, asked: list[str], digests: dict[str, str],
                 state: BatchState, wanted: set[str], deliver: Callable[[list[tuple[str, Reply]]], None]) -> None:
        """Deliver a finished batch's answers (and the errors of requests out of retries), send
        the rest round again, then mark the batch collected."""
        answers, failures, unanswered = self.results(batch)
        delivered: list[tuple[str, Reply]] = []
        for custom_id in asked:
            if custom_id in answers:
                delivered.append((custom_id, answers[custom_id]))
                state.failures.pop(custom_id, None)
                continue
            why = failures.get(custom_id) or unanswered
            if state.failed(custom_id, digests[custom_id], why) > self.batch_retries:
                delivered.append((custom_id, f"{why} (gave up after {self.batch_retries + 1} batches)"))
                state.failures.pop(custom_id, None)
        if delivered:
            deliver(delivered)
        wanted.difference_update(c for c, _ in delivered)
        entry["collected"] = True
        state.save()



def _failure_text(error: Any, status: Any, body: Any) -> str:
    """One line for a failed request line: the error object's message, else the HTTP status and body."""
    if isinstance(error, dict):
        return f"{error.get('code') or 'error'}: {error.get('message') or ''}"[:300]
    detail = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        detail = detail.get("message", detail)
    return f"HTTP {status}: {detail}"[:300]
