"""Judge backends: the models that judge pairs of answers (evaluate/judging.py says what they
are asked and how their replies are read). A judge is `openai:<model>@<url>` (any
OpenAI-compatible server, through the teachers' client) or a local GGUF (`gguf:`/`packaged:`,
through llama.cpp). Where the backend allows it the answer is constrained to a valid verdict: a
GBNF grammar (llama.cpp and its server), `guided_choice` (vLLM), and the log-probabilities of the
verdict tokens for preferences.
"""
from __future__ import annotations

import time
import unicodedata
from typing import Any, Sequence

from teachfit.env import require
from teachfit.models.openai_api import OpenAIClient, content_text, first_message
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec


def grammar_for(options: Sequence[str]) -> str:
    """A GBNF grammar that admits exactly one of `options`."""
    quoted = " | ".join('"' + o.replace("\\", "\\\\").replace('"', '\\"') + '"' for o in options)
    return f"root ::= {quoted}"


def reply_text(value: Any) -> str:
    """A judge's answer as text, NFKC-normalised (fullwidth ＞ and Ａ become > and A): strings,
    bytes (UTF-8) and OpenAI content-part lists are accepted; anything else is empty."""
    if not isinstance(value, (str, bytes, bytearray, list)):
        return ""
    return unicodedata.normalize("NFKC", content_text(value) or "")


class JudgeReplyError(ValueError):
    """A judge reply that is not a chat completion (no choices, no message)."""


def judge_request(model: str, constraint: str, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                  options: Sequence[str] | None = None, logprobs: bool = False
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chat-completion request of one judgment, as (OpenAI fields, the server's own constraint
    fields): `grammar` for a llama.cpp server, `guided_choice` for vLLM, none for 'none'."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if logprobs:
        body.update(logprobs=True, top_logprobs=10)
    server_fields: dict[str, Any] = {}
    if options and constraint == "grammar":
        server_fields["grammar"] = grammar_for(options)
    elif options and constraint == "guided_choice":
        server_fields["guided_choice"] = list(options)
    return body, server_fields


def chat_reply(out: Any, started: float) -> dict[str, Any]:
    """A chat-completion response (OpenAI's shape, which llama.cpp shares) as a judge reply: text,
    first-token top log-probabilities as plain floats, usage and seconds since `started`.
    A reply without choices[0].message raises JudgeReplyError."""
    try:
        choice = out["choices"][0]
        message = choice["message"]
        if not isinstance(message, dict):
            raise TypeError(type(message).__name__)
    except (KeyError, IndexError, TypeError) as error:
        raise JudgeReplyError(f"judge reply without choices[0].message ({type(error).__name__}: {error})") from None
    logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else {}
    content = logprobs.get("content") if isinstance(logprobs.get("content"), list) else []
    first = content[0] if content and isinstance(content[0], dict) else {}
    top = {}
    for entry in first.get("top_logprobs") or []:
        if isinstance(entry, dict) and isinstance(entry.get("token"), str) and isinstance(entry.get("logprob"), (int, float)):
            top[entry["token"]] = float(entry["logprob"])
    usage = out.get("usage") if isinstance(out.get("usage"), dict) else {}
    return {"text": reply_text(message.get("content")), "top_logprobs": top, "usage": usage,
            "seconds": round(time.perf_counter() - started, 3)}


class OpenAIJudge:
    """A judge behind an OpenAI-compatible chat endpoint; constraint: 'grammar' (llama.cpp
    server), 'guided_choice' (vLLM) or 'none'."""

    def __init__(self, spec: ModelSpec, constraint: str = "grammar", **client_options: Any):
        self.client = OpenAIClient(spec, **client_options)
        self.spec, self.constraint = spec, constraint

    def identity(self) -> dict[str, Any]:
        """What a cached judgment depends on."""
        return {"backend": "openai", "model": self.client.model, "base_url": self.client.base_url,
                "constraint": self.constraint}

    def ask(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
            options: Sequence[str] | None = None, logprobs: bool = False) -> dict[str, Any]:
        """One judge reply: text, first-token top log-probabilities, usage and time."""
        body, server_fields = judge_request(self.client.model, self.constraint, messages, max_tokens, temperature,
                                            options, logprobs)
        if server_fields:  # the server's own fields go in the SDK's extra_body
            body["extra_body"] = server_fields
        started = time.perf_counter()
        return chat_reply(self.client.post(body, check=first_message), started)


class LlamaCppJudge:
    """A local GGUF judge through llama.cpp, constrained by a grammar."""

    def __init__(self, spec: ModelSpec, n_ctx: int = 4096, n_threads: int | None = None):
        from teachfit.models.llamacpp import open_llama

        self._llama_cpp, self.spec = require("llama_cpp", "llamacpp"), spec
        self.llm = open_llama(spec, n_ctx, n_threads, logits_all=True)

    def identity(self) -> dict[str, Any]:
        """What a cached judgment depends on."""
        return {"backend": "llamacpp", "model": self.spec.fingerprint()}

    def ask(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
            options: Sequence[str] | None = None, logprobs: bool = False) -> dict[str, Any]:
        """One judge reply: text, first-token top log-probabilities, usage and time."""
        grammar = self._llama_cpp.LlamaGrammar.from_string(grammar_for(options), verbose=False) if options and not logprobs else None
        started = time.perf_counter()
        out = self.llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=temperature, grammar=grammar,
                                              logprobs=logprobs or None, top_logprobs=10 if logprobs else None)
        return chat_reply(out, started)


@register("judge", "openai")
def load_openai_judge(spec: ModelSpec, constraint: str = "grammar", **options: Any) -> OpenAIJudge:
    """Judge loader for openai:<model>@<url>."""
    keys = ("concurrency", "max_retries", "timeout", "backoff", "max_backoff", "api_key_env")
    return OpenAIJudge(spec, constraint, **{k: v for k, v in options.items() if k in keys})


@register("judge", "gguf")
@register("judge", "packaged")
def load_llamacpp_judge(spec: ModelSpec, constraint: str = "grammar", **options: Any) -> LlamaCppJudge:
    """Judge loader for a local GGUF (gguf:/packaged:), run by llama.cpp."""
    return LlamaCppJudge(spec, **{k: v for k, v in options.items() if k in ("n_ctx", "n_threads")})
