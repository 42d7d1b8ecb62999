"""Any OpenAI-compatible chat server (vLLM serve, llama.cpp server, SGLang, a hosted API).

Spec: openai:<model>@<base_url>, e.g. openai:gpt-4o-mini@https://api.openai.com/v1. Requests run
concurrently up to a bound; 429, 5xx, timeouts and refused connections are retried with
exponential backoff. The API key is read from an environment variable (OPENAI_API_KEY unless
told otherwise) and is never logged, recorded or written.
"""
from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from teachfit.models import ModelSpec, ModelSpecError, register
from teachfit.models.base import Generation, GenerationSettings, Messages

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class TransientError(RuntimeError):
    """A failure worth retrying (rate limit, server error, timeout, connection)."""


def parse_openai_spec(name: str) -> tuple[str, str]:
    """(model, base_url) from '<model>@<base_url>'."""
    model, sep, base_url = name.rpartition("@")
    if not sep or not model or not base_url.startswith(("http://", "https://")):
        raise ModelSpecError(f"openai spec must be openai:<model>@<http(s) base url>, got 'openai:{name}'")
    return model, base_url.rstrip("/")


class OpenAIClient:
    """Minimal chat-completions client with bounded concurrency and retries (stdlib only)."""

    def __init__(self, spec: ModelSpec, concurrency: int = 8, max_retries: int = 6, timeout: float = 600.0,
                 backoff: float = 1.0, max_backoff: float = 30.0, api_key_env: str = "OPENAI_API_KEY"):
        self.spec = spec
        self.model, self.base_url = parse_openai_spec(spec.name)
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.backoff, self.max_backoff, self._api_key_env = backoff, max_backoff, api_key_env
        self.retries = 0  # how many retries this client made, for reports

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self._api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            if error.code in RETRY_STATUS:
                raise TransientError(f"HTTP {error.code}: {detail}") from None
            raise RuntimeError(f"HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            raise TransientError(f"{type(error).__name__}: {getattr(error, 'reason', error)}") from None

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a chat completion, retrying transient failures with jittered exponential backoff."""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(body)
            except TransientError:
                if attempt == self.max_retries:
                    raise
                self.retries += 1
                time.sleep(min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def map(self, function: Any, items: Sequence[Any]) -> list[Any]:
        """function(item) for every item, at most `concurrency` at a time, results in order."""
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(function, items))


class OpenAITeacher(OpenAIClient):
    """A teacher behind an OpenAI-compatible /chat/completions endpoint."""

    @property
    def batch_size(self) -> int:
        """Requests handed over at once (kept in flight concurrently)."""
        return self.concurrency * 2

    def describe(self) -> dict[str, Any]:
        """What a record says about the backend (never the key)."""
        return {"backend": "openai", "model": self.model, "base_url": self.base_url}

    def _one(self, job: tuple[Messages, GenerationSettings, int]) -> Generation:
        messages, settings, seed = job
        body = {"model": self.model, "messages": messages, "temperature": settings.temperature,
                "top_p": settings.top_p, "max_tokens": settings.max_new_tokens, "seed": seed}
        started = time.perf_counter()
        try:
            out = self.post(body)
            choice, usage = out["choices"][0], out.get("usage") or {}
            return Generation(text=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason", ""),
                              prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
                              seconds=time.perf_counter() - started)
        except (RuntimeError, KeyError, IndexError, ValueError) as error:
            return Generation(error=f"{type(error).__name__}: {error}", seconds=time.perf_counter() - started)

    def generate(self, conversations: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int]) -> list[Generation]:
        """One response per conversation, requests in flight concurrently."""
        return self.map(self._one, [(m, settings, s) for m, s in zip(conversations, seeds)])


@register("teacher", "openai")
def load_openai_teacher(spec: ModelSpec, **options: Any) -> OpenAITeacher:
    """Teacher loader for openai: specs."""
    keys = ("concurrency", "max_retries", "timeout", "backoff", "max_backoff", "api_key_env")
    return OpenAITeacher(spec, **{k: v for k, v in options.items() if k in keys})
