"""A student or reference model behind a server: `openai:<model>@<base_url>[?server=...&template=...]`.

loss(y|x) needs the log-probability of every response token given everything before it. Servers
give the log-probabilities of a prompt's own tokens in three dialects, one adapter each:

  llamacpp  /v1/completions with echo + logprobs (the legacy OpenAI style; llama-cpp-python's
            server with `--logits_all true`, its default)
  vllm      /v1/completions with vLLM's `prompt_logprobs` (vLLM's server; --max-logprobs >= 0)
  sglang    SGLang's /generate with return_logprob and logprob_start_len=0

`?server=` picks one; without it (or `auto`) the server is asked (/v1/models: vLLM and SGLang
say who owns the model; anything else is treated as llamacpp). Requests go through the same
client as teachers (OpenAIClient: concurrency, timeout, retries, API key from the environment and
redacted from every message; ScoreConfig's concurrency / timeout / max_retries).

The server tokenizes. teachfit renders the conversation itself with the chat template of
`?template=<tokenizer>` (an hf id or folder, a gguf: file or a packaged: name; default: the model
name as an hf id), sends prompt + response as one string, and takes as response tokens those that
the server's text offsets place after the rendered prompt (template.render_pair: the same
contract as template.encode_pair, in characters). Offsets count the server's token strings, which
may leave special tokens out (llama-cpp-python) or keep them (vLLM, SGLang): the response start is
located from the end (the response and end-of-turn text, with or without special tokens). loss(y)
sends the start token (BOS, else EOS) + the response.

Known differences from in-process scoring, recorded in describe():
- llama-cpp-python gives no log-probability for the first echoed token, so its loss(y) leaves out
  the first response token; and its echo log-probabilities line up only when the tokenized prompt
  starts with BOS (it drops a leading BOS; otherwise they are off by one): true when the GGUF adds
  BOS or the template starts with it (SmolLM2, Llama, Gemma, Mistral), not for Qwen-style
  templates on a GGUF that adds none: use vllm/sglang or in-process scoring for those.
- Truncation at max_length counts the server's tokens.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from teachfit.models import ModelSpec, ModelSpecError, register, require
from teachfit.models.openai_api import OpenAIClient, TransientError, parse_openai_spec

PROBE_TEXT = "Hello, world."
# how to make each server return prompt log-probabilities, said when it does not
SERVER_FLAGS = {
    "llamacpp": "llama-cpp-python's server must keep every position's logits: start it with `--logits_all true` "
                "(python -m llama_cpp.server --model M.gguf --logits_all true); llama.cpp's own llama-server "
                "returns no prompt log-probabilities: use ?server=vllm|sglang servers or in-process scoring",
    "vllm": "vLLM's server must allow prompt log-probabilities: a vLLM version with `prompt_logprobs` on "
            "/v1/completions and `--max-logprobs` >= 1 (vllm serve MODEL --max-logprobs 1)",
    "sglang": "SGLang's /generate must accept return_logprob with logprob_start_len (SGLang >= 0.2); "
              "check that the base URL points at SGLang",
}
REFUSAL_WORDS = ("logits_all", "logprob", "log_prob", "echo", "not supported")


class NoPromptLogprobs(RuntimeError):
    """The server's reply has no prompt log-probabilities."""


class Token:
    """One prompt token as the server reports it."""

    __slots__ = ("offset", "text", "logprob")

    def __init__(self, offset: int, text: str, logprob: float | None):
        self.offset, self.text, self.logprob = offset, text, logprob

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


def _cumulative(texts: Sequence[str], logprobs: Sequence[float | None]) -> list[Token]:
    tokens, offset = [], 0
    for text, logprob in zip(texts, logprobs):
        tokens.append(Token(offset, text, logprob))
        offset += len(text)
    return tokens


class LlamaCppAdapter:
    """echo + logprobs on /v1/completions (OpenAI-legacy; llama-cpp-python)."""

    name = "llamacpp"
    endpoint = "/completions"

    def body(self, model: str, text: str) -> dict[str, Any]:
        return {"model": model, "prompt": text, "echo": True, "logprobs": 0, "max_tokens": 1, "temperature": 0.0}

    def tokens(self, reply: dict[str, Any]) -> list[Token]:
        try:
            logprobs = reply["choices"][0].get("logprobs")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TransientError(f"reply without choices[0] (got {sorted(reply)[:8] if isinstance(reply, dict) else type(reply).__name__})") from None
        if not logprobs or not logprobs.get("tokens") or "text_offset" not in logprobs:
            raise NoPromptLogprobs("reply has no echoed prompt log-probabilities (choices[0].logprobs)")
        generated = int((reply.get("usage") or {}).get("completion_tokens", 1) or 0)
        texts, offsets, values = logprobs["tokens"], logprobs["text_offset"], logprobs["token_logprobs"]
        keep = len(texts) - generated  # echo lists the prompt's tokens, then the one generated token
        return [Token(int(o), t, v) for t, o, v in list(zip(texts, offsets, values))[:keep]]


class VLLMAdapter:
    """vLLM's `prompt_logprobs` on /v1/completions (the prompt token's entry of each position)."""

    name = "vllm"
    endpoint = "/completions"

    def body(self, model: str, text: str) -> dict[str, Any]:
        # add_special_tokens False: the rendered text carries its own BOS, as in-process tokenization
        return {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0,
                "add_special_tokens": False}

    def tokens(self, reply: dict[str, Any]) -> list[Token]:
        try:
            entries = reply["choices"][0].get("prompt_logprobs")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TransientError("reply without choices[0]") from None
        if not entries:
            raise NoPromptLogprobs("reply has no choices[0].prompt_logprobs")
        texts, values = [], []
        for entry in entries:
            if entry is None:  # the first token: nothing before it
                texts.append(None)
                values.append(None)
                continue
            if len(entry) != 1:
                raise RuntimeError(f"prompt_logprobs=0 gave {len(entry)} candidates at a position, expected the prompt token alone")
            (item,) = entry.values()
            texts.append(item.get("decoded_token") or "")
            values.append(item.get("logprob"))
        if texts[0] is None:  # the first token's text is not reported: offsets start after it
            texts[0] = ""
        return _cumulative(texts, values)


class SGLangAdapter:
    """SGLang's native /generate with return_logprob and logprob_start_len=0."""

    name = "sglang"

    def __init__(self, base_url: str):
        self.endpoint = base_url.removesuffix("/v1") + "/generate"

    def body(self, model: str, text: str) -> dict[str, Any]:
        return {"text": text, "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}, "return_logprob": True,
                "logprob_start_len": 0, "return_text_in_logprobs": True}

    def tokens(self, reply: dict[str, Any]) -> list[Token]:
        entries = ((reply or {}).get("meta_info") or {}).get("input_token_logprobs") if isinstance(reply, dict) else None
        if not entries:
            raise NoPromptLogprobs("reply has no meta_info.input_token_logprobs")
        return _cumulative([(e[2] if len(e) > 2 else None) or "" for e in entries], [e[0] for e in entries])


def detect_server(client: OpenAIClient) -> str:
    """llamacpp | vllm | sglang, from who owns the models in /v1/models."""
    try:
        listing = client.get_json("/models")
    except RuntimeError:
        return "llamacpp"
    owners = {str(m.get("owned_by", "")).lower() for m in (listing or {}).get("data", []) if isinstance(m, dict)}
    for kind in ("vllm", "sglang"):
        if kind in owners:
            return kind
    return "llamacpp"


def load_template_tokenizer(source: str, trust_remote_code: bool = False) -> tuple[Any, str, str]:
    """(tokenizer, template name, source) of the chat template a served model's text is rendered with:
    an hf id or folder, a gguf: file or a packaged: name."""
    from teachfit.template import ensure_chat_template

    transformers = require("transformers", "hf")
    spec = ModelSpec.parse(source)
    if spec.prefix not in ("hf", "gguf", "packaged"):
        raise ModelSpecError(f"template={source}: name a tokenizer (hf id or folder, gguf:FILE, packaged:NAME)")
    try:
        gguf = spec.gguf_path()
        if gguf is not None:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(spec.name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelSpecError(f"the served model's chat template: cannot load the tokenizer '{source}' "
                             f"({str(error).splitlines()[0][:160] if str(error) else type(error).__name__}); "
                             "name one with ?template=hf:ID|gguf:FILE|packaged:NAME") from None
    return tokenizer, ensure_chat_template(tokenizer), str(spec)


def special_strings(tokenizer: Any) -> list[str]:
    """The text of the tokenizer's special tokens, longest first."""
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names |= {str(t) for t in decoder.values() if getattr(t, "special", False)}
    return sorted((n for n in names if n), key=len, reverse=True)


def response_span(tokens: Sequence[Token], suffix: str, specials: Sequence[str]) -> list[int]:
    """Indices of the tokens that carry `suffix`, the rendered text after the prompt, located from
    the end: the server's offsets count special tokens' text, or not (llama-cpp-python drops it)."""
    end = tokens[-1].end if tokens else 0
    visible = suffix
    for special in specials:
        visible = visible.replace(special, "")
    shown = "".join(t.text for t in tokens)
    start = end - (len(suffix) if shown.endswith(suffix) else len(visible))
    return [k for k, t in enumerate(tokens) if t.end > start or t.offset > start]


class ServedLMScorer(OpenAIClient):
    """LMScorer's columns from a server's prompt log-probabilities (see the module's docstring)."""

    def __init__(self, spec: ModelSpec, role: str, options: Any, trust_remote_code: bool = False,
                 backoff: float = 1.0):
        super().__init__(spec, concurrency=options.concurrency, max_retries=options.max_retries,
                         timeout=options.timeout, backoff=backoff)
        self.role, self.options = role, options
        self.tokenizer, self.template_name, self.template_source = load_template_tokenizer(
            spec.option("template") or f"hf:{self.model}", trust_remote_code)
        self.specials = special_strings(self.tokenizer)
        kind = spec.option("server", "auto")
        self.server = detect_server(self) if kind == "auto" else kind
        self.adapter = {"llamacpp": LlamaCppAdapter, "vllm": VLLMAdapter}.get(self.server, SGLangAdapter)
        self.adapter = self.adapter(self.base_url) if self.adapter is SGLangAdapter else self.adapter()
        self.endpoint = self.adapter.endpoint
        self.max_length = options.max_length
        self._probe()

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records: server, model, tokenizer and template (never the key)."""
        notes = ["tokenized by the server"]
        if self.server == "llamacpp":
            notes.append("loss(y) leaves out the first response token (no echo log-probability for it)")
        return {"role": self.role, "model": {"spec": str(self.spec), "backend": "served", "server": self.server,
                                             "server_model": self.model, "base_url": self.base_url,
                                             "tokenizer": f"server ({self.model})"},
                "template": self.template_name, "template_source": self.template_source,
                "effective_max_length": self.max_length, "notes": notes}

    def _refusal(self, detail: str) -> ModelSpecError:
        return ModelSpecError(f"{self.spec}: the {self.server} server at {self.base_url} does not return prompt "
                              f"log-probabilities ({self.redact(detail)[:200]}). {SERVER_FLAGS[self.server]}")

    def _probe(self) -> None:
        """One small request before scoring: refuse at once (no retries) when the server cannot
        return prompt log-probabilities."""
        body = self.adapter.body(self.model, PROBE_TEXT)
        try:
            reply = self._post_once(body)
        except (TransientError, RuntimeError) as error:
            if not any(word in str(error).lower() for word in REFUSAL_WORDS):
                reply = self.post(body)  # a transient fault: retried as usual
            else:
                raise self._refusal(str(error)) from None
        try:
            self.adapter.tokens(reply)
        except NoPromptLogprobs as error:
            raise self._refusal(str(error)) from None

    def _logprobs(self, text: str) -> list[Token]:
        """The prompt tokens of `text` with their log-probabilities (retried like generation)."""
        def check(reply: Any) -> None:
            try:
                self.adapter.tokens(reply)
            except NoPromptLogprobs as error:
                raise TransientError(str(error)) from None

        return self.adapter.tokens(self.post(self.adapter.body(self.model, text), check=check))

    def _nll(self, job: tuple[str, str, bool]) -> tuple[float, int, bool]:
        """(sum of NLL over response tokens, how many, truncated) of one rendered text."""
        prompt, full, unconditional = job
        tokens = self._logprobs(full)
        span = response_span(tokens, full[len(prompt):], self.specials)
        truncated = bool(span) and span[-1] >= self.max_length
        span = [k for k in span if k < self.max_length]
        shown = "".join(tokens[k].text for k in span)
        expected = full[len(prompt):].strip()[:8]
        if expected not in shown:
            raise RuntimeError(f"the server's tokens do not line up with the rendered text: response tokens "
                               f"{shown[:40]!r}, expected them to hold {expected!r}")
        values = [tokens[k].logprob for k in span]
        if unconditional and values and values[0] is None:  # llama-cpp-python: nothing for the first echoed token
            values = values[1:]
        if any(v is None for v in values) or not values:
            raise RuntimeError(f"the server gave no log-probability for some response token ({len(values)} tokens)")
        return -sum(float(v) for v in values), len(values), truncated

    def compute(self, pairs: Sequence[Any]) -> list[dict[str, Any]]:
        """Per-pair losses (nats per response token) and the metrics derived from them."""
        from teachfit.records import InputError
        from teachfit.score import lm_metrics
        from teachfit.template import render_pair, start_token_id

        jobs: list[tuple[str, str, bool]] = []
        for pair in pairs:
            try:
                jobs.append((*render_pair(self.tokenizer, pair.instruction, pair.response), False))
            except ValueError as error:
                raise InputError(pair.source or pair.id, None, f"{error} (pair {pair.id})") from None
        with_uncond = self.options.unconditional_for(self.role)
        if with_uncond:
            start_id = start_token_id(self.tokenizer)
            start = self.tokenizer.convert_ids_to_tokens(start_id) if start_id is not None else ""
            jobs += [(start, start + pair.response, True) for pair in pairs]
        nll = self.map(self._nll, jobs)
        suffix = "" if self.role == "self" else f"_{self.role}"
        rows = []
        for i in range(len(pairs)):
            sum_c, n_c, truncated = nll[i]
            sum_u, n_u, _ = nll[len(pairs) + i] if with_uncond else (math.nan, 0, False)
            rows.append(lm_metrics(sum_c / n_c, sum_u / n_u if n_u else math.nan, self.role)
                        | {f"n_response_tokens{suffix}": n_c, f"truncated{suffix}": truncated})
        return rows


@register("lm_scorer", "openai")
def load_served_scorer(spec: ModelSpec, lm_role: str, options: Any) -> ServedLMScorer:
    """Student / reference scorer for openai: specs."""
    return ServedLMScorer(spec, lm_role, options, trust_remote_code=getattr(options, "trust_remote_code", False))


@register("lm_scorer_key", "openai")
def served_key_material(spec: ModelSpec, options: Any, role: str) -> dict[str, Any]:
    """What a served model's cached results depend on, known before any request: the model name,
    base URL, server kind and template as the spec gives them (no key: keys live in the
    environment), the template rule, the length limit, loss(y) or not. Never equal to an
    in-process model's key (kind lm-served)."""
    from teachfit.score import SCORING_VERSION
    from teachfit.template import DEFAULT_TEMPLATE_NAME

    model, base_url = parse_openai_spec(spec.name)
    material = {"kind": "lm-served", "model": model, "base_url": base_url, "server": spec.option("server", "auto"),
                "template": spec.option("template") or f"hf:{model}", "default_template": DEFAULT_TEMPLATE_NAME,
                "max_length": options.max_length, "version": SCORING_VERSION}
    return material if options.unconditional_for(role) else material | {"unconditional": False}
