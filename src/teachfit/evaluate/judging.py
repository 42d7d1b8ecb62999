"""Pairwise LLM judges as data: judge configs (YAML + prompt text), verdict and preference
parsing. The judge models themselves: teachfit.models.judges.
"""
from __future__ import annotations

import functools
import math
import re
import string
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from teachfit.env import shipped, shipped_text
from teachfit.models.judges import reply_text
from teachfit.records import InputError

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
            path = shipped(f"judges/{name_or_path}.yaml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)} | {"prompt_file"}
            unknown = sorted(set(data) - known) if isinstance(data, dict) else ["(not a mapping)"]
            if unknown or "prompt_file" not in data:
                raise InputError(path, None, f"a judge file needs prompt_file, name and style; unknown keys {unknown}")
            data["prompt"] = (path.parent / data.pop("prompt_file")).read_text(encoding="utf-8")
            return cls(**data)
        except (OSError, yaml.YAMLError, TypeError) as error:
            raise InputError(path, None, f"cannot read this judge file ({type(error).__name__}: {error})") from None

    def render(self, instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
        """The judge's conversation for one comparison."""
        text = self.prompt.format(instruction=instruction, output_a=output_a, output_b=output_b)
        return [{"role": "user", "content": text}]


BRACKETED = re.compile(r"\[\[([^\[\]\n]{1,20})\]\]")
LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+")


def _squeeze(text: str) -> str:
    """Whitespace inside [[ ... ]] removed ([[ A > B ]] -> [[A>B]]), other runs collapsed per line."""
    text = BRACKETED.sub(lambda m: "[[" + re.sub(r"\s+", "", m.group(1)) + "]]", text)
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


@functools.lru_cache(maxsize=16)
def template_verdict_lines(prompt: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The lines of a judge prompt that hold a bracketed verdict: (its list of labels to choose
    from, its other such lines: an example answer, an instruction naming the labels)."""
    labels, others = [], []
    for line in _squeeze(unicodedata.normalize("NFKC", prompt)).splitlines():
        line = line.strip()
        if BRACKETED.search(line):
            (labels if LIST_ITEM.match(line) else others).append(line)
    return tuple(labels), tuple(others)


@functools.lru_cache(maxsize=1)
def _shipped_verdict_prompt() -> str:
    return shipped_text("judges/arena_hard_prompt.txt")


# two or more labels in a row ("[[A>>B]], [[A>B]] or [[A=B]]"): a list of options, never an answer
LABEL_RUN = re.compile(r"\[\[[^\[\]\n]{1,20}\]\](?:\s*(?:,|;|/|\||\bor\b|\band\b)\s*\[\[[^\[\]\n]{1,20}\]\])+")


def strip_echoed_template(text: str, prompt: str | None = None) -> str:
    """`text` without what a judge copied from its prompt (default: the shipped Arena-Hard one):
    whole copied lines of the prompt that name a verdict (an example, an instruction), the
    prompt's list of labels when two or more of them were copied (one label alone is the judge's
    choice), any numbered list of two or more different labels and any run of labels
    ("[[A>>B]], [[A>B]] or [[A=B]]")."""
    labels, others = template_verdict_lines(prompt if prompt is not None else _shipped_verdict_prompt())
    for line in others:
        text = text.replace(line, " ")
    if sum(label in text for label in set(labels)) >= 2:
        for label in labels:
            text = text.replace(label, " ")
    text = LABEL_RUN.sub(" ", text)
    lines = text.splitlines()
    listed = {i for i, line in enumerate(lines) if LIST_ITEM.match(line) and BRACKETED.search(line)}
    if len({BRACKETED.search(lines[i]).group(1) for i in listed}) >= 2:
        lines = [line for i, line in enumerate(lines) if i not in listed]
    return "\n".join(lines)


def parse_verdict(text: Any, pattern: str = r"\[\[([AB<>=]+)\]\]", prompt: str | None = None) -> str | None:
    """The judge's final verdict label like 'A>B', or None when it gave none.

    Only a bracketed label counts ([[A>B]], spaces inside allowed, fullwidth signs normalised),
    never a bare 'A>B' in prose; labels in a copy of the prompt's own text (`prompt`, default the
    shipped Arena-Hard prompt) are ignored; the last remaining label is the answer."""
    cleaned = strip_echoed_template(_squeeze(reply_text(text)), prompt)
    found = [m for m in re.findall(pattern, cleaned) if isinstance(m, str) and m in VERDICT_MEANING]
    return found[-1] if found else None


def _choice_token(text: str) -> str:
    return text.strip(string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019")


def preference_for_first(reply: dict[str, Any], choices: Sequence[str]) -> float | None:
    """P(first choice) from the first token's log-probabilities, renormalized over the two
    choices; else 1/0 when the answer text is exactly one choice (spaces and punctuation around
    it ignored: "A", " B.", "(A)"); None for anything else ("Answer: B", "As", "Both; A").
    A choice token whose log-probability is not a finite number (NaN, +-inf, garbage) makes the
    log-probabilities untrustworthy: the text decides, as if there were none."""
    top = reply.get("top_logprobs") if isinstance(reply, dict) else None
    first, second = choices
    p_first = p_second = 0.0
    trusted = True
    for token, logprob in (top.items() if isinstance(top, dict) else ()):
        token = _choice_token(reply_text(token))
        if token not in (first, second):
            continue
        try:
            value = float(logprob)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            trusted = False
            break
        p = math.exp(min(value, 0.0))  # a log-probability is <= 0; clamp garbage like 1000
        if token == first:
            p_first += p
        else:
            p_second += p
    if trusted and p_first + p_second > 0:
        return p_first / (p_first + p_second)
    answer = _choice_token(reply_text(reply.get("text") if isinstance(reply, dict) else None))
    if answer in (first, second):
        return 1.0 if answer == first else 0.0
    return None
