"""A student or reference model behind a server: `openai:<model>@<base_url>[?server=...&template=...]`.

loss(y|x) needs the log-probability of every response token given everything before it; servers
return the log-probabilities of a prompt's own tokens in three dialects (score/adapters.py).
`?server=` picks one; without it (or `auto`) the server is asked once (/v1/models, a short request
without retries: vLLM and SGLang say who owns the model; anything else is treated as llamacpp),
and the kind found is what the cache key and describe() record. llama.cpp's own C++ llama-server
(its /props has build_info) is refused in one line: it returns no prompt log-probabilities with
echo (llama.cpp issue 27174). Requests go through the same client as teachers (OpenAIClient:
concurrency, timeout, retries; the API key by the one rule of openai_api.key_env_for, redacted
from every message; ScoreConfig's ClientOptions).

teachfit renders each pair with the chat template of `?template=<tokenizer>` (an hf id or folder,
a gguf: file or a packaged: name; default: the model name as an hf id) and applies --max-length
with that tokenizer, as in-process scoring does (vLLM and SGLang: clamped to the server's
`max_model_len` from /v1/models minus one, the token generated; a vLLM server that says on
/metrics that prefix caching is on is refused, vLLM issue 42019) (a longer conversation is cut and counted as
truncated; a prompt of max_length tokens or more is refused, naming the pair).

- vllm, sglang: token ids in (template.encode_pair, encode_response_alone): the response starts
  exactly at encode_pair's response_start, and score.vllm.response_logprobs reads the reply.
- llamacpp (llama-cpp-python): the rendered text in, response tokens located by the server's text
  offsets; a pair whose offsets do not cover the text exactly is refused. The server may add its
  own BOS (found by the probe): then the template's BOS text is left out of what is sent, so BOS is
  never doubled. Known differences, recorded in describe(): no log-probability for the first echoed
  token (loss(y) leaves out the first response token), and the echo log-probabilities line up only
  when the tokenized prompt starts with BOS: otherwise the scorer refuses (Qwen-style templates on
  a GGUF that adds no BOS: use vllm/sglang or in-process scoring).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from teachfit.env import require
from teachfit.models.openai_api import HTTPStatusError, OpenAIClient, TransientError, parse_openai_spec
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec, ModelSpecError
from teachfit.records import InputError
from teachfit.score.adapters import (PROBE_TEXT, REFUSAL_WORDS, SERVER_FLAGS, NoPromptLogprobs, context_limit,
                                     detect_server, llamacpp_span, make_adapter, refuse_llama_server,
                                     special_strings, vllm_prefix_caching)
from teachfit.score.lm import lm_key_material, rows_from_nll
from teachfit.score.vllm import RANK_CLIP, response_logprobs

SERVED_VERSION = 3  # 2: token ids for vllm/sglang, client-side --max-length, no doubled BOS on llama.cpp; 3: strict RSR ranks
_DETECTED: dict[str, str] = {}  # base URL -> server kind found, shared by the cache key and the scorer


def server_kind(spec: ModelSpec, client: OpenAIClient | None = None) -> str:
    """The spec's ?server=, or the kind the server says it is (asked once per base URL)."""
    kind = spec.option("server", "auto")
    if kind != "auto":
        return kind
    client = client or OpenAIClient(spec, max_retries=0)
    if client.base_url not in _DETECTED:
        _DETECTED[client.base_url] = detect_server(client)
    return _DETECTED[client.base_url]


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


class ServedLMScorer(OpenAIClient):
    """LMScorer's columns from a server's prompt log-probabilities (see the module's docstring)."""

    def __init__(self, spec: ModelSpec, role: str, options: Any, trust_remote_code: bool = False,
                 backoff: float = 1.0):
        super().__init__(spec, concurrency=options.concurrency, max_retries=options.max_retries,
                         timeout=options.timeout, backoff=backoff)
        self.role, self.options, self.max_length = role, options, options.max_length
        self.tokenizer, self.template_name, self.template_source = load_template_tokenizer(
            spec.option("template") or f"hf:{self.model}", trust_remote_code)
        self.specials = special_strings(self.tokenizer)
        self.server = server_kind(spec, self)
        if self.server == "llamacpp":  # llama.cpp's own llama-server cannot do it: said at once, in one line
            refuse_llama_server(self)
        self.adapter = make_adapter(self.server, self.base_url)
        if self.server == "vllm" and options.wants(f"rsr_{role}"):  # RSR's strict rank: the top 100 of each position
            self.adapter.listed = RANK_CLIP
        self.endpoint = self.adapter.endpoint
        self.bos_text = self.tokenizer.bos_token if self.tokenizer.bos_token_id is not None else None
        self.server_adds_bos = False
        self.server_limit = self.prefix_caching = None
        if self.adapter.token_ids:  # vLLM / SGLang: their context length, and (vLLM) prefix caching
            self.server_limit = context_limit(self, self.model)
            if self.server_limit is not None:  # one token is generated: the prompt must leave room for it
                self.max_length = min(self.max_length, self.server_limit - 1)
        if self.server == "vllm":
            self.prefix_caching = vllm_prefix_caching(self)
            if self.prefix_caching:
                raise ModelSpecError(f"{self.spec}: the vllm server at {self.base_url} runs with prefix caching, "
                                     "which makes prompt log-probabilities depend on the order of requests (vLLM "
                                     f"issue 42019). {SERVER_FLAGS['vllm']}")
        self._probe()

    def describe(self) -> dict[str, Any]:
        """What the output's metadata records: server kind, model, tokenizer and template (never the key)."""
        if self.adapter.token_ids:
            tokenizer, notes = "teachfit (token ids in)", ["tokenized by teachfit (template tokenizer), token ids sent"]
            if self.server == "vllm" and self.prefix_caching is None:
                notes.append("the server does not say whether prefix caching is on (/metrics): it must run with "
                             "--no-enable-prefix-caching (vLLM issue 42019)")
        else:
            tokenizer = f"server ({self.model})"
            notes = ["tokenized by the server; response tokens by its text offsets",
                     "loss(y) leaves out the first response token (no echo log-probability for it)",
                     "the server adds BOS: the template's BOS text is not sent (no doubled BOS)" if self.server_adds_bos
                     else "the server adds no BOS: the template's BOS text is sent"]
        return {"role": self.role, "model": {"spec": str(self.spec), "backend": "served", "server": self.server,
                                             "server_model": self.model, "base_url": self.base_url,
                                             "tokenizer": tokenizer, "server_adds_bos": self.server_adds_bos},
                "template": self.template_name, "template_source": self.template_source,
                "effective_max_length": self.max_length, "server_max_model_len": self.server_limit,
                "server_prefix_caching": self.prefix_caching, "notes": notes}

    def _refusal(self, detail: str) -> ModelSpecError:
        return ModelSpecError(f"{self.spec}: the {self.server} server at {self.base_url} does not return prompt "
                              f"log-probabilities ({self.redact(detail)[:200]}). {SERVER_FLAGS[self.server]}")

    def _failed(self, error: Exception, what: str) -> ModelSpecError:
        """A server error as one line naming the spec (the key redacted)."""
        hint = ""
        if isinstance(error, HTTPStatusError) and error.code in (401, 403):
            hint = ("; the key: ?key_env=NAME sends the environment variable NAME (without it, OPENAI_API_KEY "
                    "goes to https:// URLs only)")
        elif isinstance(error, HTTPStatusError) and error.code == 404:
            hint = "; check the base URL (.../v1), the model name and ?server="
        return ModelSpecError(f"{self.spec}: the {self.server} server at {self.base_url} failed {what}: "
                              f"{self.redact(str(error))[:300]}{hint}")

    def _send(self, body: dict[str, Any], parse: Callable[[Any], Any], what: str) -> Any:
        """POST with retries (a reply without log-probabilities is retried too); parse(reply)."""
        def check(reply: Any) -> None:
            try:
                parse(reply)
            except NoPromptLogprobs as error:
                raise TransientError(str(error)) from None

        try:
            return parse(self.post(body, check=check))
        except (HTTPStatusError, TransientError) as error:
            raise self._failed(error, what) from None

    def _probe(self) -> None:
        """One small request before scoring: refuse at once (no retries) when the server cannot
        return prompt log-probabilities; llama.cpp: whether the server adds its own BOS."""
        if self.adapter.token_ids:
            from teachfit.template import start_token_id

            start = start_token_id(self.tokenizer)
            sent: Any = ([start] if start is not None else []) + list(
                self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
        else:
            sent = PROBE_TEXT
        body = self.adapter.body(self.model, sent)
        try:
            reply = self._post_once(body)
        except (HTTPStatusError, TransientError) as error:
            if any(word in str(error).lower() for word in REFUSAL_WORDS):
                raise self._refusal(str(error)) from None
            if isinstance(error, HTTPStatusError):
                raise self._failed(error, "the first request") from None
            reply = self._send(body, lambda r: r, "the first request")  # a transient fault: retried as usual
        try:
            got = self.adapter.entries(reply, sent if self.adapter.token_ids else None)
        except NoPromptLogprobs as error:
            raise self._refusal(str(error)) from None
        except (ValueError, KeyError, TypeError) as error:
            raise ModelSpecError(f"{self.spec}: the {self.server} server's reply does not fit the request "
                                 f"({self.redact(str(error))[:200]}); check ?server=") from None
        if not self.adapter.token_ids:  # the probe's text has no BOS: one more token counted is the server's
            self.server_adds_bos = got.prompt_tokens == len(self.tokenizer(sent, add_special_tokens=False)["input_ids"]) + 1

    def _ids_nll(self, job: tuple[str, Any]) -> tuple[float, int, float]:
        """(sum of NLL, tokens, sum of clipped ranks) over encoded.input_ids[response_start:]."""
        pair_id, encoded = job
        ids = list(encoded.input_ids)
        try:
            return self._send(self.adapter.body(self.model, ids),
                              lambda r: response_logprobs(self.adapter.entries(r, ids), ids, encoded.response_start,
                                                          getattr(self.adapter, "listed", 0)),
                              f"on pair {pair_id}")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            if isinstance(error, ModelSpecError):
                raise
            raise ModelSpecError(f"{self.spec}: pair {pair_id}: the {self.server} server's log-probabilities do not "
                                 f"match the token ids sent ({type(error).__name__}: {str(error)[:120]})") from None

    def _bos_aligned(self, text: str) -> str:
        """`text` as sent to llama.cpp: without the template's BOS text when the server adds BOS;
        refused when the tokenized text would not start with BOS (the echo is off by one then)."""
        if self.server_adds_bos:
            return text[len(self.bos_text):] if self.bos_text and text.startswith(self.bos_text) else text
        if self.bos_text and text.startswith(self.bos_text):
            return text
        raise ModelSpecError(f"{self.spec}: llama-cpp-python's echoed log-probabilities are off by one unless the "
                             "prompt starts with BOS, and neither the server adds one nor the rendered text starts "
                             "with it: use ?server=vllm|sglang or in-process scoring for this model")

    def _text_nll(self, job: tuple[str, Any, str, str, bool]) -> tuple[float, int, float]:
        """(sum of NLL, tokens, NaN) over the response tokens of one rendered text (llama.cpp)."""
        pair_id, source, text, suffix, unconditional = job
        sent = self._bos_aligned(text)
        listed = sum(1 for t in self.tokenizer(sent, add_special_tokens=False)["input_ids"]
                     if t != self.tokenizer.bos_token_id)  # the echo leaves out BOS tokens
        try:
            echo = self._send(self.adapter.body(self.model, sent), lambda r: self.adapter.entries(r, listed),
                              f"on pair {pair_id}")
            span = llamacpp_span(echo, sent, suffix, self.specials)
        except ValueError as error:
            if isinstance(error, ModelSpecError):
                raise
            raise InputError(source, None, f"{error} (pair {pair_id}; {self.spec})") from None
        values = [echo.logprobs[k] for k in span]
        if unconditional and values and values[0] is None:  # nothing for the first echoed token
            values = values[1:]
        if not values or any(v is None for v in values):
            raise InputError(source, None, f"the server gave no log-probability for some response token "
                                           f"(pair {pair_id}; {len(values)} tokens)")
        return -sum(float(v) for v in values), len(values), math.nan

    def _jobs(self, pairs: Sequence[Any], with_uncond: bool) -> tuple[list[Any], list[bool]]:
        from teachfit.template import encode_pair, encode_response_alone, render_pair, start_token_id

        jobs, truncated = [], []
        for pair in pairs:
            try:
                if self.adapter.token_ids:
                    encoded = encode_pair(self.tokenizer, pair.instruction, pair.response, self.max_length)
                    jobs.append((pair.id, encoded))
                    truncated.append(encoded.truncated)
                else:
                    prompt, full, cut = render_pair(self.tokenizer, pair.instruction, pair.response, self.max_length)
                    jobs.append((pair.id, pair.source or pair.id, full, full[len(prompt):], False))
                    truncated.append(cut)
            except ValueError as error:
                raise InputError(pair.source or pair.id, None, f"{error} (pair {pair.id})") from None
        if not with_uncond:
            return jobs, truncated
        start_id = start_token_id(self.tokenizer)
        start = self.tokenizer.convert_ids_to_tokens(start_id) if start_id is not None else ""
        for pair in pairs:
            alone = encode_response_alone(self.tokenizer, pair.response, self.max_length)
            if self.adapter.token_ids:
                jobs.append((pair.id, alone))
                continue
            response = pair.response
            if alone.truncated:  # cut the text after the kept tokens
                kept = self.tokenizer.decode(alone.input_ids[alone.response_start:])
                response = kept if response.startswith(kept) else response
            jobs.append((pair.id, pair.source or pair.id, start + response, response, True))
        return jobs, truncated

    def compute(self, pairs: Sequence[Any]) -> list[dict[str, Any]]:
        """Per-pair losses (nats per response token) and the metrics derived from them."""
        jobs, truncated = self._jobs(pairs, self.options.unconditional_for(self.role))
        nll = self.map(self._ids_nll if self.adapter.token_ids else self._text_nll, jobs)
        return rows_from_nll(nll, truncated, self.role)  # vLLM reports ranks (RSR); the others do not


@register("lm_scorer", "openai")
def load_served_scorer(spec: ModelSpec, lm_role: str, options: Any) -> ServedLMScorer:
    """Student / reference scorer for openai: specs."""
    return ServedLMScorer(spec, lm_role, options, trust_remote_code=getattr(options, "trust_remote_code", False))


@register("lm_scorer_key", "openai")
def served_key_material(spec: ModelSpec, options: Any, role: str) -> dict[str, Any]:
    """What a served model's cached results depend on: the model name, base URL, the server kind
    (found by asking when the spec says auto), the template, the template rule, the length limit,
    loss(y) or not (no key: keys live in the environment). Never equal to an in-process model's
    key (kind lm-served)."""
    from teachfit.template import DEFAULT_TEMPLATE_NAME

    model, base_url = parse_openai_spec(spec.name)
    identity = {"model": model, "base_url": base_url, "server": server_kind(spec), "served_version": SERVED_VERSION,
                "template": spec.option("template") or f"hf:{model}", "default_template": DEFAULT_TEMPLATE_NAME}
    return lm_key_material("lm-served", identity, options.max_length, options.unconditional_for(role), role)
