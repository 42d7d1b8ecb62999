"""Pairwise LLM judges: judge configs as data (YAML + prompt text), backends, verdict parsing.

A judge is `openai:<model>@<url>` (any OpenAI-compatible server) or a local GGUF
(`gguf:`/`packaged:`, through llama.cpp). Where the backend allows it the answer is constrained
to a valid verdict: a GBNF grammar (llama.cpp and its server), `guided_choice` (vLLM), and the
log-probabilities of the verdict tokens for preferences.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from teachfit.models import ModelSpec, require

# What each Arena-Hard verdict means for the assistant in position A: (score, strong).
VERDICT_MEANING = {"A>>B": (1.0, True), "A>B": (1.0, False), "A=B": (0.5, False), "B=A": (0.5, False),
                   "B>A": (0.0, False), "B>>A": (0.0, True), "A<B": (0.0, False), "A<<B": (0.0, True),
                   "B<A": (1.0, False), "B<<A": (1.0, True)}


@dataclass
class JudgeConfig:
    """A judge described as data: its style, prompt text and decoding settings."""

    name: str
    style: str  # "preference" (AE2) or "verdict" (AH)
    prompt: str
    choices: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    verdict_pattern: str = r"\[\[([AB<>=]+)\]\]"
    strong_weight: float = 3.0
    max_tokens: int = 16
    temperature: float = 0.0
    retries: int = 2

    @classmethod
    def load(cls, name_or_path: str) -> "JudgeConfig":
        """A shipped config by name ('alpaca_eval', 'arena_hard') or a YAML file of one's own."""
        import yaml

        path = Path(name_or_path)
        if not path.suffix:
            path = Path(str(resources.files("teachfit").joinpath(f"data/judges/{name_or_path}.yaml")))
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["prompt"] = (path.parent / data.pop("prompt_file")).read_text(encoding="utf-8")
        return cls(**data)

    def render(self, instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
        """The judge's conversation for one comparison."""
        text = self.prompt.format(instruction=instruction, output_a=output_a, output_b=output_b)
        return [{"role": "user", "content": text}]


def grammar_for(options: Sequence[str]) -> str:
    """A GBNF grammar that admits exactly one of `options`."""
    quoted = " | ".join('"' + o.replace("\\", "\\\\").replace('"', '\\"') + '"' for o in options)
    return f"root ::= {quoted}"


def parse_verdict(text: str, pattern: str) -> str | None:
    """The last verdict label like 'A>B' in a judge's answer, or None when there is none."""
    found = [m for m in re.findall(pattern, text or "") if m in VERDICT_MEANING]
    if found:
        return found[-1]
    bare = re.findall(r"(A>>B|A>B|A=B|B>A|B>>A)", text or "")
    return bare[-1] if bare else None


def preference_for_first(reply: dict[str, Any], choices: Sequence[str]) -> float | None:
    """P(first choice) from the first token's log-probabilities, renormalized over the two
    choices; else 1/0 from the answer text; None when neither says anything."""
    top = reply.get("top_logprobs") or {}
    first, second = choices
    p_first = sum(math.exp(lp) for tok, lp in top.items() if tok.strip() == first)
    p_second = sum(math.exp(lp) for tok, lp in top.items() if tok.strip() == second)
    if p_first + p_second > 0:
        return p_first / (p_first + p_second)
    text = (reply.get("text") or "").strip()
    if text[:1] in (first, second):
        return 1.0 if text[:1] == first else 0.0
    return None


def chat_reply(out: dict[str, Any], started: float) -> dict[str, Any]:
    """A chat-completion response (OpenAI's shape, which llama.cpp shares) as a judge reply: text,
    first-token top log-probabilities as plain floats, usage and seconds since `started`."""
    choice = out["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    top = {t["token"]: float(t["logprob"]) for t in content[0].get("top_logprobs", [])} if content else {}
    return {"text": choice["message"].get("content") or "", "top_logprobs": top, "usage": out.get("usage") or {},
            "seconds": round(time.perf_counter() - started, 3)}


class OpenAIJudge:
    """A judge behind an OpenAI-compatible chat endpoint; constraint: 'grammar' (llama.cpp
    server), 'guided_choice' (vLLM) or 'none'."""

    def __init__(self, spec: ModelSpec, constraint: str = "grammar", **client_options: Any):
        from teachfit.models.openai_api import OpenAIClient

        self.client = OpenAIClient(spec, **client_options)
        self.spec, self.constraint = spec, constraint

    def identity(self) -> dict[str, Any]:
        """What a cached judgment depends on."""
        return {"backend": "openai", "model": self.client.model, "base_url": self.client.base_url,
                "constraint": self.constraint}

    def ask(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
            options: Sequence[str] | None = None, logprobs: bool = False) -> dict[str, Any]:
        """One judge reply: text, first-token top log-probabilities, usage and time."""
        body: dict[str, Any] = {"model": self.client.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature}
        if logprobs:
            body.update(logprobs=True, top_logprobs=10)
        if options and self.constraint == "grammar":
            body["grammar"] = grammar_for(options)
        elif options and self.constraint == "guided_choice":
            body["guided_choice"] = list(options)
        started = time.perf_counter()
        return chat_reply(self.client.post(body), started)


class LlamaCppJudge:
    """A local GGUF judge through llama.cpp, constrained by a grammar."""

    def __init__(self, spec: ModelSpec, n_ctx: int = 4096, n_threads: int | None = None):
        import os

        llama_cpp = require("llama_cpp", "llamacpp")
        self._llama_cpp, self.spec = llama_cpp, spec
        self.llm = llama_cpp.Llama(model_path=str(spec.gguf_path()), n_ctx=n_ctx, logits_all=True, verbose=False,
                                   n_threads=n_threads or os.cpu_count())

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


def load_judge(spec: str, constraint: str = "grammar", **options: Any) -> Any:
    """A judge from its spec: openai:<model>@<url>, or gguf:/packaged: for a local llama.cpp judge."""
    parsed = ModelSpec.parse(spec)
    if parsed.prefix == "openai":
        keys = ("concurrency", "max_retries", "timeout", "backoff", "max_backoff", "api_key_env")
        return OpenAIJudge(parsed, constraint, **{k: v for k, v in options.items() if k in keys})
    if parsed.prefix in ("gguf", "packaged"):
        return LlamaCppJudge(parsed, **{k: v for k, v in options.items() if k in ("n_ctx", "n_threads")})
    raise ValueError(f"judge '{spec}': use openai:<model>@<url> or a GGUF (gguf:/packaged:)")
