"""Which tokens are "the response" (DESIGN section 2): the contract shared by scoring and training.

The conversation [user: x, assistant: y] is rendered with the student's chat template; the
response tokens are the tokens after the prompt [user: x] rendered with
add_generation_prompt=True, up to and including the end-of-turn token (whitespace-only tokens
that a template puts after the end of turn are not part of the response).

A tokenizer without a chat template gets DEFAULT_CHAT_TEMPLATE, an Alpaca-style layout that a
base model reads naturally (<bos> is the EOS token for GPT-2-style tokenizers without BOS,
the same start token that loss(y) is conditioned on):

    <bos>### Instruction:
    {instruction}

    ### Response:
    {response}<eos>
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TEMPLATE_NAME = "teachfit-alpaca-v1"
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else (eos_token if eos_token else '') }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}"
    "{{ eos_token if eos_token else '' }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)

# The same template for training in TRL (SFTTrainer), written beside a selection as chat_template.jinja
# when the student has none: it renders every prompt and every scored response token exactly as
# DEFAULT_CHAT_TEMPLATE does; the response and its end of turn are marked {% generation %} (TRL's
# assistant_only_loss trains on them alone), and a conversation that ends with the assistant's turn
# ends at its EOS, without the blank line teachfit never scores (so TRL's prompt-completion and
# assistant masks hold exactly the scored tokens).
DEFAULT_TRAINING_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else (eos_token if eos_token else '') }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n"
    "{% generation %}{{ message['content'] }}{{ eos_token if eos_token else '' }}{% endgeneration %}"
    "{% if not loop.last or add_generation_prompt %}{{ '\\n\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


@dataclass
class EncodedPair:
    """Token ids of one rendered pair; ids[response_start:] are the response tokens."""

    input_ids: list[int]
    response_start: int
    truncated: bool

    @property
    def n_response_tokens(self) -> int:
        """How many tokens the loss is taken over."""
        return len(self.input_ids) - self.response_start


def ensure_chat_template(tokenizer: Any) -> str:
    """Give `tokenizer` teachfit's default template if it has none; return the template's name."""
    if getattr(tokenizer, "chat_template", None):
        return "model"
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return DEFAULT_TEMPLATE_NAME


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _is_blank(tokenizer: Any, token_id: int) -> bool:
    return tokenizer.decode([token_id]).strip() == "" and token_id not in tokenizer.all_special_ids


def encode_pair(tokenizer: Any, instruction: str, response: str, max_length: int = 4096) -> EncodedPair:
    """Render and tokenize (x, y) with the chat template; mark where the response starts.

    Over `max_length` the response is truncated from the right. Raises ValueError when the
    prompt alone leaves no room for a response token, or when the template does not render the
    prompt as a prefix of the conversation.
    """
    user = [{"role": "user", "content": instruction}]
    prompt_ids = _tokenize(tokenizer, _render(tokenizer, user, add_generation_prompt=True))
    full_ids = _tokenize(
        tokenizer, _render(tokenizer, user + [{"role": "assistant", "content": response}], add_generation_prompt=False)
    )
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("chat template: the prompt is not a token prefix of the conversation")
    end = len(full_ids)
    while end > len(prompt_ids) + 1 and _is_blank(tokenizer, full_ids[end - 1]):
        end -= 1
    full_ids = full_ids[:end]
    if len(prompt_ids) >= max_length:
        raise ValueError(f"instruction longer than max_length ({len(prompt_ids)} >= {max_length} tokens)")
    truncated = len(full_ids) > max_length
    return EncodedPair(full_ids[:max_length], len(prompt_ids), truncated)


def render_pair(tokenizer: Any, instruction: str, response: str, max_length: int = 4096) -> tuple[str, str, bool]:
    """The same contract in characters, for servers that tokenize themselves (the llama.cpp adapter
    of teachfit.score.served): (prompt, conversation, truncated) rendered with the chat template; the
    response is conversation[len(prompt):], end of turn included, whitespace after it dropped (as
    encode_pair drops blank tokens after the end of turn). Lengths are encode_pair's, in this
    tokenizer's tokens: it raises the same ValueError (a prompt of max_length tokens or more), and a
    conversation over max_length tokens is cut after its max_length-th token (truncated True)."""
    encoded = encode_pair(tokenizer, instruction, response, max_length)
    user = [{"role": "user", "content": instruction}]
    prompt = _render(tokenizer, user, add_generation_prompt=True)
    full = _render(tokenizer, user + [{"role": "assistant", "content": response}], add_generation_prompt=False)
    if not full.startswith(prompt):
        raise ValueError("chat template: the prompt is not a prefix of the conversation")
    full = prompt + full[len(prompt):].rstrip()
    if encoded.truncated:
        try:  # where the max_length-th token ends, in characters
            spans = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            end = spans[max_length - 1][1]
        except (NotImplementedError, TypeError, KeyError):  # a slow tokenizer: decode the kept tokens
            kept = tokenizer.decode(encoded.input_ids)
            if not full.startswith(kept):
                raise ValueError(f"over max_length ({max_length} tokens) and the kept tokens do not decode to a "
                                 "prefix of the text: cannot cut it in characters") from None
            end = len(kept)
        full = full[:max(end, len(prompt) + 1)]
    if len(full) == len(prompt):
        raise ValueError("empty response")
    return prompt, full, encoded.truncated


def start_token_id(tokenizer: Any) -> int | None:
    """The token a bare response is conditioned on: BOS, else EOS (GPT-2 style), else None."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def encode_response_alone(tokenizer: Any, response: str, max_length: int = 4096) -> EncodedPair:
    """Tokenize y after BOS only (no instruction, no template), for loss(y).

    Without any BOS/EOS token the first response token has no context and is not scored.
    """
    ids = _tokenize(tokenizer, response)
    start = start_token_id(tokenizer)
    if start is not None:
        ids, response_start = [start] + ids, 1
    else:
        response_start = 1
    truncated = len(ids) > max_length
    return EncodedPair(ids[:max_length], response_start, truncated)


def training_text(tokenizer: Any, instruction: str, response: str) -> str:
    """(x, y) as one text that a trainer tokenizing it the usual way (`tokenizer(text)`, special
    tokens added, as TRL's SFTTrainer does for a `text` column) turns into exactly the tokens
    encode_pair scores: the rendered conversation up to the end of turn, whitespace after it
    dropped, and without the template's BOS text when the tokenizer adds BOS itself (no doubled BOS).
    Never truncated. ValueError when this tokenizer cannot give the scored tokens back from text."""
    encoded = encode_pair(tokenizer, instruction, response, max_length=1 << 40)
    _, text, _ = render_pair(tokenizer, instruction, response, max_length=1 << 40)
    bos = tokenizer.bos_token
    added = list(tokenizer("a")["input_ids"])
    if bos and tokenizer.bos_token_id is not None and added[:1] == [tokenizer.bos_token_id] \
            and _tokenize(tokenizer, "a")[:1] != [tokenizer.bos_token_id] and text.startswith(bos):
        text = text[len(bos):]
    if list(tokenizer(text)["input_ids"]) != encoded.input_ids:
        raise ValueError("the text format cannot hold the scored tokens for this tokenizer (tokenizing the rendered "
                         "text does not give them back): use --format messages or prompt-completion")
    return text
