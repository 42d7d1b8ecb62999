"""Judges through a provider's batch API: `--judge openai-batch:<model>@<url>` (or
`openai:<model>@<url>?batch=1`).

The judging code (evaluate/pairwise.Judgments) hands `prefetch` the first attempt of every
judgment it does not have cached; they go out as batches (models/openai_batch.BatchClient: the
state file beside the judgments cache makes them resumable), and `ask` then answers from what came
back. A request that was not prefetched (a retry of an unparsable verdict, at another temperature)
goes to the same server's synchronous endpoint, at once and at full price, through OpenAIJudge.
The judge's identity is the synchronous judge's: a judgment is the same whichever way it was paid for.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from teachfit.models.judges import OpenAIJudge, chat_reply, judge_request
from teachfit.models.openai_api import first_message
from teachfit.models.openai_batch import BatchClient, Reply, batch_options, body_digest
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec
from teachfit.store import ResultCache

JudgeRequest = tuple[list[dict[str, str]], int, float, Sequence[str] | None, bool]  # as ask() takes them


class BatchJudge(BatchClient):
    """A judge whose first attempts go out as provider batches (see the module docstring)."""

    check = staticmethod(first_message)  # a judge reply may be empty text; it must be a chat completion

    def __init__(self, spec: ModelSpec, constraint: str = "none", client_options: dict[str, Any] | None = None,
                 **batch_options: Any):
        super().__init__(spec, **batch_options)
        self.constraint, self._client_options = constraint, client_options or {}
        self._replies: dict[str, Reply] = {}  # body digest -> reply or error, from prefetch
        self._synchronous: OpenAIJudge | None = None

    def identity(self) -> dict[str, Any]:
        """What a cached judgment depends on (the synchronous openai: judge's identity)."""
        return {"backend": "openai", "model": self.model, "base_url": self.base_url, "constraint": self.constraint}

    def body(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
             options: Sequence[str] | None = None, logprobs: bool = False) -> dict[str, Any]:
        """The chat-completion request of one judgment as one batch line (OpenAIJudge.ask sends the
        same, its server fields in the SDK's extra_body)."""
        body, server_fields = judge_request(self.model, self.constraint, messages, max_tokens, temperature,
                                            options, logprobs)
        return {**body, **server_fields}

    def prefetch(self, requests: Sequence[JudgeRequest], state_path: Path | None) -> None:
        """Send every request through batches (resuming those recorded in `state_path`) and keep
        the replies for ask(). With a state file, each batch's replies are also stored durably
        beside it (a ResultCache by body digest) before the batch is marked collected, so a run
        killed before its judgments are cached takes them from there instead of paying again."""
        bodies = {body_digest(b): b for b in (self.body(*request) for request in requests)}
        if state_path is None:
            self.run_bodies({k: b for k, b in bodies.items() if k not in self._replies}, None, self._replies.update)
            return
        with ResultCache(Path(state_path).parent / "batch-replies") as stored:
            missing = [k for k in bodies if k not in self._replies]
            for digest, found in zip(missing, stored.get_many(missing)):
                if found is not None:
                    self._replies[digest] = found["reply"]

            def keep(replies: list[tuple[str, Reply]]) -> None:
                stored.put_many((digest, {"reply": reply}) for digest, reply in replies)  # durable first
                self._replies.update(replies)

            self.run_bodies({k: b for k, b in bodies.items() if k not in self._replies}, state_path, keep)

    def ask(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
            options: Sequence[str] | None = None, logprobs: bool = False) -> dict[str, Any]:
        """One judge reply: the prefetched one, else one synchronous request."""
        started = time.perf_counter()
        reply = self._replies.get(body_digest(self.body(messages, max_tokens, temperature, options, logprobs)))
        if isinstance(reply, dict):
            return chat_reply(reply, started)
        if isinstance(reply, str):
            raise RuntimeError(reply)  # the batch gave up on it: Judgments counts it unparsable and retries
        if self._synchronous is None:
            self._synchronous = OpenAIJudge(ModelSpec("openai", self.spec.name, self.spec.options), self.constraint,
                                            **self._client_options)
        return self._synchronous.ask(messages, max_tokens, temperature, options, logprobs)


@register("judge", "openai-batch")
def load_batch_judge(spec: ModelSpec, constraint: str = "grammar", **options: Any) -> BatchJudge:
    """Judge loader for openai-batch: specs (and openai:...?batch=1)."""
    client_keys = ("concurrency", "max_retries", "timeout", "backoff", "max_backoff", "api_key_env")
    return BatchJudge(spec, constraint, client_options={k: v for k, v in options.items() if k in client_keys},
                      **batch_options(options))
