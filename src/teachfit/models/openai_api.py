"""Any OpenAI-compatible chat server (vLLM serve, llama.cpp server, SGLang, a hosted API).

Spec: openai:<model>@<base_url>, e.g. openai:gpt-4o-mini@https://api.openai.com/v1. Requests go
through the `openai` SDK (pip install 'teachfit[openai]'): chat.completions / completions with
`extra_body` for a server's own fields, the SDK's client for other routes. They run concurrently
up to a bound; 408, 409, 429, 5xx and every transport failure (timeouts, refused or reset
connections, bodies cut short, replies that are not HTTP or not JSON) are retried with
exponential backoff by one loop of ours (the SDK's own retries are off: they would not retry a
reply that is not JSON or has `content: null`, would ignore --backoff, and would multiply the
attempts), which waits what a 429/503's Retry-After asks when it says.

The API key (one rule for teachers, judges and served students, key_env_for): sent only when
asked, read from the environment variable the spec names (`?key_env=NAME`, to any URL), else
from OPENAI_API_KEY for https:// URLs only (a plain-http server, e.g. one on localhost, gets no
key unless its spec names one). teachfit sets the Authorization header of every request itself
(the SDK would otherwise read OPENAI_API_KEY for any URL) and sends no OPENAI_ORG_ID /
OPENAI_PROJECT_ID header. The key is never logged, recorded or written: every error message is
redacted.
"""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from teachfit.env import require
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec, ModelSpecError
from teachfit.models.base import Generation, GenerationSettings, Messages

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}  # and any other 5xx (server_fault)
DEFAULT_TIMEOUT = 120.0  # seconds per socket operation (connect, each read)
DEFAULT_MAX_RETRIES = 5
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
MAX_RETRY_AFTER = 120.0  # seconds: the longest Retry-After honoured (a longer one: our own backoff)
REDACTED = "[REDACTED]"


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret (an API key) replaced by [REDACTED]."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def content_text(content: Any) -> str | None:
    """A chat message's content as text: a string, bytes (UTF-8), or a list of content parts
    (the text parts joined); None stays None."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, (bytes, bytearray)):
        return bytes(content).decode("utf-8", "replace")
    if isinstance(content, list):
        parts = [p if isinstance(p, str) else p.get("text") for p in content
                 if isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("text"), str))]
        return "".join(parts)
    return str(content)


def first_message(out: Any) -> dict[str, Any]:
    """The first choice of a chat-completion reply; a reply without one is a TransientError."""
    try:
        choice = out["choices"][0]
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            return choice
    except (KeyError, IndexError, TypeError):
        pass
    keys = sorted(out)[:8] if isinstance(out, dict) else type(out).__name__
    raise TransientError(f"reply without choices[0].message (got {keys})")


def completion_choice(out: Any) -> dict[str, Any]:
    """first_message(out), which must also have text: `content: null` is an error, not an empty answer."""
    choice = first_message(out)
    if content_text(choice["message"].get("content")) is None:
        raise TransientError(f"reply with content null (finish_reason {choice.get('finish_reason')!r})")
    return choice


class TransientError(RuntimeError):
    """A failure worth retrying (rate limit, server error, timeout, connection); `retry_after`:
    the seconds the server asked to wait (Retry-After), or None."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class HTTPStatusError(RuntimeError):
    """A reply with an HTTP status not worth retrying (400, 401, 404...); `code` is the status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def key_env_for(spec: ModelSpec, base_url: str, api_key_env: str | None = None) -> str | None:
    """The environment variable whose value is sent as the API key, or None (send none): the
    spec's `?key_env=NAME` (or a loader's api_key_env) to any URL, else OPENAI_API_KEY to https only."""
    named = spec.option("key_env") or api_key_env
    if named:
        if not os.environ.get(named):
            raise ModelSpecError(f"{spec}: key_env={named}, but the environment variable {named} is not set")
        return named
    return DEFAULT_KEY_ENV if base_url.startswith("https://") else None


def parse_openai_spec(name: str) -> tuple[str, str]:
    """(model, base_url) from '<model>@<base_url>'."""
    model, sep, base_url = name.rpartition("@")
    if not sep or not model or not base_url.startswith(("http://", "https://")):
        raise ModelSpecError(f"openai spec must be openai:<model>@<http(s) base url>, got 'openai:{name}'")
    return model, base_url.rstrip("/")


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a reply asks for in seconds (Retry-After as a number of seconds, or retry-after-ms),
    when it is above 0 and at most MAX_RETRY_AFTER; else None."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name)) / divisor
        except (TypeError, ValueError):
            continue
        if 0 < value <= MAX_RETRY_AFTER:
            return value
    return None


def sdk_client(base_url: str, timeout: float, max_retries: int = 0) -> Any:
    """An openai.OpenAI client under teachfit's key rules: Authorization is set per request
    (auth_headers), never from the SDK's own OPENAI_API_KEY, and no OpenAI-Organization or
    OpenAI-Project header comes from the environment."""
    openai = require("openai", "openai")
    omit = openai.Omit()
    return openai.OpenAI(api_key="teachfit-sets-authorization", base_url=base_url, timeout=timeout,
                         max_retries=max_retries, default_headers={"OpenAI-Organization": omit, "OpenAI-Project": omit})


def auth_headers(key: str | None) -> dict[str, Any]:
    """Per-request headers: Authorization with `key`, or no Authorization header at all without one."""
    return {"Authorization": f"Bearer {key}"} if key else {"Authorization": require("openai", "openai").Omit()}


class OpenAIClient:
    """Chat-completions client on the `openai` SDK, with bounded concurrency and our retries."""

    def __init__(self, spec: ModelSpec, concurrency: int = 8, max_retries: int = DEFAULT_MAX_RETRIES,
                 timeout: float = DEFAULT_TIMEOUT, backoff: float = 1.0, max_backoff: float = 30.0,
                 api_key_env: str | None = None):
        self.spec = spec
        self.model, self.base_url = parse_openai_spec(spec.name)
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ModelSpecError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
            raise ModelSpecError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, float(timeout)
        self.backoff, self.max_backoff = backoff, max_backoff
        self._api_key_env = key_env_for(spec, self.base_url, api_key_env)
        self._openai = require("openai", "openai")
        self._sdk = sdk_client(self.base_url, self.timeout, max_retries=0)  # the SDK's retries off: ours, _with_retries
        self.retries = 0  # how many retries this client made, for reports

    def redact(self, text: str) -> str:
        """`text` without the API key (whatever a server echoes back)."""
        named = os.environ.get(self._api_key_env) if self._api_key_env else None
        return redact(text, named, os.environ.get(DEFAULT_KEY_ENV))

    def _auth(self) -> dict[str, Any]:
        """Per-request headers: our Authorization, or none at all (Omit) when no key is sent."""
        key = os.environ.get(self._api_key_env) if self._api_key_env else None
        return auth_headers(key)

    endpoint = "/chat/completions"  # where post() sends its bodies (a full URL, or a path under base_url)

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request_once(self.endpoint, body)

    def get_json(self, endpoint: str, timeout: float | None = None, retries: bool = True) -> Any:
        """GET a JSON document (e.g. /models), with post()'s retries unless told otherwise."""
        once = lambda: self._request_once(endpoint, None, timeout)  # noqa: E731
        return self._with_retries(once) if retries else once()

    def get_text(self, endpoint: str, timeout: float | None = None) -> str:
        """GET a text document (e.g. /metrics), one try."""
        return self._raw_request(endpoint, None, timeout).text

    def _raw_request(self, endpoint: str, body: dict[str, Any] | None, timeout: float | None = None) -> Any:
        """One request through the SDK: the reply (an httpx response, body read). OpenAI's own
        routes (/chat/completions, /completions) through its resources, `extra_body` in `body`
        carrying a server's own fields; other routes and GETs through its generic client.
        Raises TransientError or HTTPStatusError, the key redacted."""
        sdk, openai = self._sdk, self._openai
        options = {"extra_headers": self._auth(), "timeout": timeout or self.timeout}
        try:
            if body is not None and endpoint == "/chat/completions":
                return sdk.chat.completions.with_raw_response.create(**body, **options).http_response
            if body is not None and endpoint == "/completions":
                return sdk.completions.with_raw_response.create(**body, **options).http_response
            generic = {"headers": options["extra_headers"], "timeout": options["timeout"]}
            httpx = require("httpx2", "openai")  # the SDK's HTTP library: cast_to=Response is the reply as is
            if body is None:
                return sdk.get(endpoint, cast_to=httpx.Response, options=generic)
            return sdk.post(endpoint, cast_to=httpx.Response, body=body, options=generic)
        except openai.APIStatusError as error:
            raise self._status_error(error.status_code, error.response) from None
        except openai.APIConnectionError as error:
            # refused / reset connections, timeouts, bodies cut short, replies that are not HTTP
            cause = error.__cause__ or error
            raise TransientError(self.redact(f"{type(cause).__name__}: {cause}")[:300]) from None

    def _status_error(self, code: int, response: Any) -> RuntimeError:
        """TransientError (408, 409, 429, 5xx) or HTTPStatusError, quoting the body (redacted)."""
        detail = self.redact(response.text)[:300]  # the SDK has read the body
        if code in RETRY_STATUS or code >= 500:
            return TransientError(f"HTTP {code}: {detail}", retry_after_seconds(response.headers))
        return HTTPStatusError(code, f"HTTP {code}: {detail}")

    def _request_once(self, endpoint: str, body: dict[str, Any] | None, timeout: float | None = None) -> Any:
        reply = self._raw_request(endpoint, body, timeout)
        try:
            return reply.json()
        except ValueError as error:  # not JSON, or not text
            text = self.redact(reply.content.decode("utf-8", "replace"))[:200]
            raise TransientError(f"reply is not JSON ({type(error).__name__}): {text!r}") from None

    def post(self, body: dict[str, Any], check: Any = None) -> dict[str, Any]:
        """POST to `endpoint`, retrying transient failures with jittered exponential backoff;
        `check(reply)` may raise TransientError to have a malformed reply retried too."""

        def once() -> dict[str, Any]:
            out = self._post_once(body)
            if check is not None:
                check(out)
            return out

        return self._with_retries(once)

    def _with_retries(self, once: Any) -> Any:
        for attempt in range(self.max_retries + 1):
            try:
                return once()
            except TransientError as error:
                if attempt == self.max_retries:
                    raise TransientError(f"{self.redact(str(error))} (gave up after {attempt + 1} attempts)") from None
                self.retries += 1
                wait = getattr(error, "retry_after", None)
                if wait is None:
                    wait = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def map(self, function: Any, items: Sequence[Any]) -> list[Any]:
        """function(item) for every item, at most `concurrency` at a time, results in order."""
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(function, items))


def teacher_request(model: str, messages: Messages, settings: GenerationSettings, seed: int) -> dict[str, Any]:
    """The chat-completion request of one teacher answer (sent alone, or as a batch line)."""
    return {"model": model, "messages": messages, "temperature": settings.temperature,
            "top_p": settings.top_p, "max_tokens": settings.max_new_tokens, "seed": seed}


def completion_generation(out: dict[str, Any], seconds: float = 0.0) -> Generation:
    """A checked chat completion as a teacher's Generation: text, finish reason, the server's usage."""
    choice, usage = completion_choice(out), out.get("usage") or {}
    return Generation(text=content_text(choice["message"]["content"]) or "", finish_reason=choice.get("finish_reason") or "",
                      prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
                      seconds=seconds)


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
        started = time.perf_counter()
        try:
            out = self.post(teacher_request(self.model, messages, settings, seed), check=completion_choice)
            return completion_generation(out, seconds=time.perf_counter() - started)
        except (RuntimeError, KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
            return Generation(error=self.redact(f"{type(error).__name__}: {error}"), seconds=time.perf_counter() - started)

    def generate(self, conversations: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int]) -> list[Generation]:
        """One response per conversation, requests in flight concurrently."""
        return self.map(self._one, [(m, settings, s) for m, s in zip(conversations, seeds)])


@register("teacher", "openai")
def load_openai_teacher(spec: ModelSpec, **options: Any) -> OpenAITeacher:
    """Teacher loader for openai: specs."""
    keys = ("concurrency", "max_retries", "timeout", "backoff", "max_backoff", "api_key_env")
    return OpenAITeacher(spec, **{k: v for k, v in options.items() if k in keys})
