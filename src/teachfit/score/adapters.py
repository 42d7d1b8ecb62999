"""The three dialects in which servers return the log-probabilities of a prompt's own tokens, one
adapter each (used by score/served.py):

  vllm      /v1/completions with `prompt` as token ids and vLLM's `prompt_logprobs`
            (vLLM's server; --max-logprobs >= 0)
  sglang    SGLang's /generate with `input_ids`, return_logprob and logprob_start_len=0
  llamacpp  /v1/completions with echo + logprobs on the rendered text (the legacy OpenAI style;
            llama-cpp-python's server with `--logits_all true`, its default)

vLLM and SGLang take token ids: teachfit tokenizes with its one contract (template.encode_pair)
and their replies become vLLM's prompt_logprobs shape (one {token id: logprob} entry per prompt
token, None first), read by score.vllm.response_logprobs, so the response starts exactly at
encode_pair's response_start. llama-cpp-python takes text (its prompt log-probabilities are not
reliable for token-id prompts): the response tokens are located by the server's text offsets, and
a pair whose offsets do not cover the rendered text exactly is refused (llamacpp_span).
"""
from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, Sequence

from teachfit.models.openai_api import HTTPStatusError, OpenAIClient, TransientError
from teachfit.models.spec import ModelSpecError

PROBE_TEXT = "Hello, world."
DETECT_TIMEOUT = 5.0  # seconds for /models when the server kind is detected (one try)
# how to make each server return prompt log-probabilities, said when it does not
SERVER_FLAGS = {
    "llamacpp": "llama-cpp-python's server must keep every position's logits: start it with `--logits_all true` "
                "(python -m llama_cpp.server --model M.gguf --logits_all true); llama.cpp's own llama-server "
                "returns no prompt log-probabilities: use ?server=vllm|sglang servers or in-process scoring",
    # prefix caching: with it on, vLLM's prompt log-probabilities depend on the order of requests
    # (vllm-project/vllm issue 42019, open; the fix PR 42245 not merged): scoring needs it off
    "vllm": "vLLM's server must allow prompt log-probabilities and keep them independent of request order: "
            "a vLLM version with `prompt_logprobs` on /v1/completions, `--max-logprobs` >= 100 (RSR reads the top "
            "100 tokens of each position) and prefix caching off (vllm serve MODEL --max-logprobs 100 "
            "--no-enable-prefix-caching)",
    "sglang": "SGLang's /generate must accept input_ids with return_logprob and logprob_start_len (SGLang >= 0.2); "
              "check that the base URL points at SGLang",
}
REFUSAL_WORDS = ("logits_all", "logprob", "log_prob", "echo", "not supported")


class NoPromptLogprobs(RuntimeError):
    """The server's reply has no prompt log-probabilities."""


def _choice(reply: Any) -> dict[str, Any]:
    try:
        choice = reply["choices"][0]
        if isinstance(choice, dict):
            return choice
    except (KeyError, IndexError, TypeError):
        pass
    raise TransientError(f"reply without choices[0] (got {sorted(reply)[:8] if isinstance(reply, dict) else type(reply).__name__})")


def _entry(token_id: int, logprob: Any, rank: Any = None) -> dict[int, Any]:
    return {int(token_id): SimpleNamespace(logprob=float(logprob), rank=rank)}


class VLLMAdapter:
    """vLLM: token ids in, `prompt_logprobs` (the prompt token's entry of each position) out."""

    name, token_ids, endpoint = "vllm", True, "/completions"
    listed = 0  # top tokens asked for at each position: RANK_CLIP when RSR is wanted (score.vllm.strict_rank)

    def body(self, model: str, ids: Sequence[int]) -> dict[str, Any]:
        return {"model": model, "prompt": list(ids), "max_tokens": 1, "temperature": 0.0,
                "extra_body": {"prompt_logprobs": self.listed, "add_special_tokens": False}}  # vLLM's own fields

    def entries(self, reply: Any, ids: Sequence[int]) -> list[dict[int, Any] | None]:
        got = _choice(reply).get("prompt_logprobs")
        if not got:
            raise NoPromptLogprobs("reply has no choices[0].prompt_logprobs")
        if len(got) != len(ids):
            raise ValueError(f"{len(got)} prompt_logprobs entries for {len(ids)} token ids sent")
        return [None if e is None else {int(k): SimpleNamespace(logprob=float(v["logprob"]), rank=v.get("rank"))
                                        for k, v in e.items()} for e in got]


class SGLangAdapter:
    """SGLang's native /generate: input_ids in, meta_info.input_token_logprobs out."""

    name, token_ids = "sglang", True

    def __init__(self, base_url: str):
        self.endpoint = base_url.removesuffix("/v1") + "/generate"

    def body(self, model: str, ids: Sequence[int]) -> dict[str, Any]:
        return {"input_ids": list(ids), "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                "return_logprob": True, "logprob_start_len": 0}

    def entries(self, reply: Any, ids: Sequence[int]) -> list[dict[int, Any] | None]:
        got = ((reply or {}).get("meta_info") or {}).get("input_token_logprobs") if isinstance(reply, dict) else None
        if not got:
            raise NoPromptLogprobs("reply has no meta_info.input_token_logprobs")
        if len(got) != len(ids):
            raise ValueError(f"{len(got)} input_token_logprobs for {len(ids)} token ids sent")
        # each [logprob, token id, text]; keyed by the id the server saw, so a mismatch is a KeyError
        return [None if e[0] is None else _entry(e[1], e[0]) for e in got]


class Echo:
    """llama-cpp-python's echoed prompt: token texts, text offsets, log-probabilities (None for the
    first), `end` (where the prompt's text ends, in the server's characters) and how many prompt
    tokens the server counted (BOS included, which the echo leaves out)."""

    def __init__(self, texts: list[str], offsets: list[int], logprobs: list[float | None], end: int, prompt_tokens: int):
        self.texts, self.offsets, self.logprobs, self.end, self.prompt_tokens = texts, offsets, logprobs, end, prompt_tokens


class LlamaCppAdapter:
    """echo + logprobs on /v1/completions (OpenAI-legacy; llama-cpp-python): text in."""

    name, token_ids, endpoint = "llamacpp", False, "/completions"

    def body(self, model: str, text: str) -> dict[str, Any]:
        return {"model": model, "prompt": text, "echo": True, "logprobs": 0, "max_tokens": 1, "temperature": 0.0}

    def entries(self, reply: Any, listed: int | None = None) -> Echo:
        """The echo of a prompt of which the server lists `listed` tokens (the template tokenizer's
        count without BOS tokens: the echo leaves them out), then possibly the generated token."""
        logprobs = _choice(reply).get("logprobs")
        if not logprobs or not logprobs.get("tokens") or "text_offset" not in logprobs:
            raise NoPromptLogprobs("reply has no echoed prompt log-probabilities (choices[0].logprobs)")
        texts, offsets, values = logprobs["tokens"], [int(o) for o in logprobs["text_offset"]], logprobs["token_logprobs"]
        keep = len(texts) if listed is None else listed
        if keep not in (len(texts), len(texts) - 1):
            raise ValueError(f"the server lists {len(texts)} tokens for a prompt of {listed} (its tokenization "
                             "differs from the template tokenizer's)")
        # the prompt's text ends where the generated token starts, if listed (offsets decode whole
        # prefixes, so a token holding part of a UTF-8 character does not shift them)
        end = offsets[keep] if keep < len(texts) else offsets[keep - 1] + len(texts[keep - 1])
        prompt_tokens = int((reply.get("usage") or {}).get("prompt_tokens", 0) or 0)
        return Echo(list(texts[:keep]), offsets[:keep], list(values[:keep]), end, prompt_tokens)


def visible(text: str, specials: Sequence[str]) -> str:
    """`text` without the special tokens' text (what llama-cpp-python's offsets count)."""
    for special in specials:
        text = text.replace(special, "")
    return text


def llamacpp_span(echo: Echo, sent: str, suffix: str, specials: Sequence[str]) -> list[int]:
    """Indices of the echoed tokens that carry `suffix`, the end of `sent` after the prompt. The
    server's offsets count characters with special tokens' text left out (llama-cpp-python) or
    kept; the text it covers must be exactly that long, and no token may straddle the response
    boundary: otherwise ValueError (the pair is refused, never silently misaligned)."""
    if echo.end == len(sent):
        start = echo.end - len(suffix)
    elif echo.end == len(visible(sent, specials)):
        start = echo.end - len(visible(suffix, specials))
    else:
        raise ValueError(f"the server's tokens cover {echo.end} characters, the rendered text has "
                         f"{len(visible(sent, specials))} ({len(sent)} with special tokens): they do not line up")
    ends = echo.offsets[1:] + [echo.end]
    for offset, end in zip(echo.offsets, ends):
        if offset < start < end:
            raise ValueError("a server token straddles the start of the response (its tokenization differs "
                             "from the template tokenizer's)")
    span = [k for k, offset in enumerate(echo.offsets) if offset >= start]
    if not span:
        raise ValueError("no server token in the response")
    return span


def detect_server(client: OpenAIClient) -> str:
    """llamacpp | vllm | sglang, from who owns the models in /v1/models (one short request, no
    retries). A server that cannot be reached is an error (name the kind with ?server=)."""
    try:
        listing = client.get_json("/models", timeout=DETECT_TIMEOUT, retries=False)
    except HTTPStatusError:
        return "llamacpp"
    except TransientError as error:
        raise ModelSpecError(f"{client.spec}: cannot ask the server at {client.base_url} what it is "
                             f"({client.redact(str(error))[:160]}); start it, or name it with ?server=llamacpp|vllm|sglang") from None
    owners = {str(m.get("owned_by", "")).lower() for m in (listing or {}).get("data", []) if isinstance(m, dict)} \
        if isinstance(listing, dict) else set()
    for kind in ("vllm", "sglang"):
        if kind in owners:
            return kind
    return "llamacpp"


def llama_server_build(client: OpenAIClient) -> str | None:
    """The build of llama.cpp's C++ llama-server when the server is one, else None (one short GET
    of /props, no retries). llama-server answers /props with `build_info` and
    `default_generation_settings` (tools/server/server-context.cpp, the props handler) and lists
    its models `owned_by: llamacpp`; llama-cpp-python's server has no /props (its models are
    `owned_by: me`), nor have vLLM and SGLang."""
    try:
        props = client.get_json(client.base_url.removesuffix("/v1") + "/props", timeout=DETECT_TIMEOUT, retries=False)
    except (HTTPStatusError, TransientError):
        return None
    if isinstance(props, dict) and "build_info" in props and "default_generation_settings" in props:
        return str(props["build_info"])[:80]
    return None


def refuse_llama_server(client: OpenAIClient) -> None:
    """A one-line ModelSpecError when the server is llama.cpp's C++ llama-server, which returns no
    prompt log-probabilities with echo (llama.cpp issue 27174, open): it cannot serve a student."""
    build = llama_server_build(client)
    if build is not None:
        raise ModelSpecError(f"{client.spec}: the server at {client.base_url} is llama.cpp's llama-server (build "
                             f"{build}), which returns no prompt log-probabilities with echo (llama.cpp issue 27174), "
                             "so it cannot serve a student for scoring: serve the model with vLLM, SGLang or "
                             "llama-cpp-python's server (python -m llama_cpp.server --model M.gguf), or score it "
                             "in-process (--student gguf:M.gguf)")


def context_limit(client: OpenAIClient, model: str) -> int | None:
    """The server's context length for `model` from /v1/models (one short request, no retries),
    or None when it does not say. vLLM lists `max_model_len` on every base model's card
    (vllm/entrypoints/openai/models/serving.py, show_available_models: the engine's
    model_config.max_model_len); SGLang the same field (sglang/srt/entrypoints/http_server.py,
    available_models: model_config.context_len). Both refuse a prompt of that many tokens when one
    token is to be generated (vLLM: InputProcessor._validate_prompt_len, `prompt_len ==
    max_model_len` for a generate runner; SGLang: TokenizerManager._validate_one_request,
    `input_token_num >= context_len`), so what is sent must stay within limit - 1."""
    try:
        listing = client.get_json("/models", timeout=DETECT_TIMEOUT, retries=False)
    except (HTTPStatusError, TransientError):
        return None
    cards = [m for m in (listing or {}).get("data", []) if isinstance(m, dict)] if isinstance(listing, dict) else []
    ordered = [m for m in cards if m.get("id") == model] + [m for m in cards if m.get("id") != model]
    for card in ordered:
        value = card.get("max_model_len")
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    return None


PREFIX_CACHING_LABEL = re.compile(r'enable_prefix_caching="(\w+)"')


def vllm_prefix_caching(client: OpenAIClient) -> bool | None:
    """Whether a vLLM server runs with prefix caching, read from its Prometheus /metrics (vLLM's
    stat logger publishes the cache config as the `vllm:cache_config_info` gauge, one label per
    CacheConfig field: vllm/v1/metrics/loggers.py log_metrics_info, CacheConfig.metrics_info);
    None when the server does not say (metrics off, a proxy, another server)."""
    try:
        text = client.get_text(client.base_url.removesuffix("/v1") + "/metrics", timeout=DETECT_TIMEOUT)
    except (HTTPStatusError, TransientError):
        return None
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            found = PREFIX_CACHING_LABEL.search(line)
            if found:
                return found.group(1).lower() == "true"
    return None


def make_adapter(kind: str, base_url: str) -> Any:
    """The adapter of a server kind."""
    return {"llamacpp": LlamaCppAdapter, "vllm": VLLMAdapter}.get(kind, lambda: SGLangAdapter(base_url))()


def special_strings(tokenizer: Any) -> list[str]:
    """The text of the tokenizer's special tokens, longest first."""
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names |= {str(t) for t in decoder.values() if getattr(t, "special", False)}
    return sorted((n for n in names if n), key=len, reverse=True)
