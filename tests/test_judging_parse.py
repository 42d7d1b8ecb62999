"""Judge replies: the Arena-Hard verdict parser and the AlpacaEval preference reader on a table
of probe strings, and garbage replies from a real (misbehaving) server that must not stop an
evaluation."""
import math

import pytest

from fake_openai_server import FakeServer, completion
from teachfit.evaluate.judging import JudgeConfig, parse_verdict, preference_for_first
from teachfit.models.judges import chat_reply

AH_PROMPT = JudgeConfig.load("arena_hard").prompt
LABELS = "\n".join(line for line in AH_PROMPT.splitlines() if "[[" in line)  # the prompt's own list of labels
assert LABELS.count("[[") == 5

CUSTOM_PROMPT = ("Compare the answers. When you are done, output your final verdict by a label: [[A>>B]], [[A>B]], "
                 "[[A=B]], [[B>A]] or [[B>>A]].\nExample output: \"My final verdict is tie: [[A=B]]\".\n\n{instruction}")

VERDICT_PROBES = [
    ("[[A>B]]", "A>B"),
    ("[[A>>B]]", "A>>B"),
    ("[[B>>A]]", "B>>A"),
    ("[[A=B]]", "A=B"),
    ("My final verdict is [[B>A]].", "B>A"),
    ("**[[B>>A]]**", "B>>A"),
    ("[[A > B]]", "A>B"),                       # spaces inside
    ("[[ B >> A ]]", "B>>A"),
    ("[[A\uff1eB]]", "A>B"),                    # fullwidth >
    ("[[B\uff1cA]]", "B<A"),                    # fullwidth <
    ("\uff3b\uff3bA\uff1dB\uff3d\uff3d", "A=B"),  # fullwidth brackets and =
    ("First I leaned to [[A>B]], but on reflection: [[B>A]]", "B>A"),  # the last one is the answer
    ("[[A>B]]\n\nMy final verdict is tie: [[A=B]]", "A=B"),
    ("A>B", None),                              # bare, in prose: not a verdict
    ("Assistant A is better, so A>>B.", None),
    ("SA>BC", None),
    ("if (A>B) then B is worse", None),
    ("It is not true that B>A; B is not better than A.", None),  # negated sentence
    ("[[SA>BC]]", None),
    ("[[A>B>A]]", None),
    ("[[C>D]]", None),
    ("[[A>B]", None),                           # not closed
    ("[A>B]", None),
    ("", None),
    (None, None),
    (12345, None),
    (b"My verdict: [[A>>B]]", "A>>B"),          # bytes
    ([{"type": "text", "text": "My verdict: "}, {"type": "text", "text": "[[B>A]]"}], "B>A"),  # content parts
    ([{"type": "image_url", "image_url": {"url": "x"}}], None),
    (LABELS, None),                             # the judge echoed the prompt's label list, no verdict
    ("Sure. " + AH_PROMPT.replace("{instruction}", "q").replace("{output_a}", "a").replace("{output_b}", "b"), None),
    (LABELS + "\n\nMy final verdict is: [[A=B]]", "A=B"),  # echo, then a verdict
    (LABELS + "\nMy final verdict is: [[B>>A]]\n", "B>>A"),
    ("1. Assistant A is significantly better: [[A>>B]]", "A>>B"),  # one label copied: the judge's choice
    ("Verdicts:\n1. big win: [[A>>B]]\n2. small win: [[A>B]]\n3. tie: [[A=B]]", None),  # some other echoed list
    ("I must answer with one of [[A>>B]], [[A>B]], [[A=B]] or [[B>>A]].", None),  # a run of labels: options
]


@pytest.mark.parametrize("text,expected", VERDICT_PROBES, ids=[f"probe{i}" for i in range(len(VERDICT_PROBES))])
def test_parse_verdict_probes(text, expected):
    assert parse_verdict(text, JudgeConfig.load("arena_hard").verdict_pattern) == expected


def test_parse_verdict_ignores_echoed_lines_of_the_judges_own_prompt():
    echo = "You asked me to output your final verdict by a label: [[A>>B]], [[A>B]], [[A=B]], [[B>A]] or [[B>>A]]."
    assert parse_verdict(echo, prompt=CUSTOM_PROMPT) is None
    assert parse_verdict('Example output: "My final verdict is tie: [[A=B]]".', prompt=CUSTOM_PROMPT) is None
    assert parse_verdict(echo + "\nMy final verdict: [[B>A]]", prompt=CUSTOM_PROMPT) == "B>A"
    assert parse_verdict("My final verdict is tie: [[A=B]]", prompt=CUSTOM_PROMPT) == "A=B"  # the example's form
    assert len(VERDICT_PROBES) >= 25


PREFERENCE_PROBES = [
    ({"text": "A"}, 1.0), ({"text": "B"}, 0.0), ({"text": " B."}, 0.0), ({"text": "(A)"}, 1.0),
    ({"text": "**A**"}, 1.0), ({"text": "'B'\n"}, 0.0), ({"text": "\uff21"}, 1.0),
    ({"text": "Answer: B"}, None), ({"text": "Assistant B"}, None), ({"text": "As"}, None),
    ({"text": "Based"}, None), ({"text": "Both are good; A"}, None), ({"text": "AB"}, None),
    ({"text": "a"}, None), ({"text": ""}, None), ({"text": None}, None), ({}, None),
    ({"text": b"B"}, 0.0), ({"text": [{"type": "text", "text": "A"}]}, 1.0),
    ({"text": "B", "top_logprobs": {"A": -0.1, "B": -2.3}}, math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.3))),
    ({"top_logprobs": {"A": 1000.0, "B": 0.0}}, 0.5),               # garbage logprob: clamped, no OverflowError
    ({"top_logprobs": {"A": 1e308, "B": -1e308}}, 1.0),
    ({"top_logprobs": {" A": -1.0, "A": -2.0, "B": -1.0}},
     (math.exp(-1) + math.exp(-2)) / (math.exp(-1) + math.exp(-2) + math.exp(-1))),
    ({"top_logprobs": {"As": -0.01, "Based": -0.5}, "text": "As"}, None),  # neither choice token
    ({"top_logprobs": {"A": float("nan"), "B": "x"}, "text": "B"}, 0.0),  # unusable numbers: the text decides
    # a non-finite log-probability of a choice makes the log-probabilities untrustworthy: the text decides
    ({"top_logprobs": {"A": float("nan"), "B": -1.0}, "text": "A"}, 1.0),
    ({"top_logprobs": {"A": "nan", "B": -1.0}, "text": "A"}, 1.0),
    ({"top_logprobs": {"A": -0.5, "B": float("nan")}, "text": "B"}, 0.0),
    ({"top_logprobs": {"A": float("inf"), "B": -1.0}, "text": "B"}, 0.0),
    ({"top_logprobs": {"A": float("-inf"), "B": -1.0}, "text": "A"}, 1.0),
    ({"top_logprobs": {"A": float("nan"), "B": -1.0}, "text": "Answer: A"}, None),  # and no clear text: unparsable
    ({"top_logprobs": {"A": float("nan"), "B": -1.0}}, None),
    ({"top_logprobs": {"A": -0.1, "B": -2.3, "As": float("nan")}, "text": "B"},  # not a choice: ignored
     math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.3))),
]


@pytest.mark.parametrize("reply,expected", PREFERENCE_PROBES, ids=[f"pref{i}" for i in range(len(PREFERENCE_PROBES))])
def test_preference_for_first_probes(reply, expected):
    got = preference_for_first(reply, ["A", "B"])
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("out", [None, [], {}, {"choices": []}, {"choices": [None]}, {"choices": [{"message": "x"}]},
                                 "<html>502</html>"])
def test_chat_reply_refuses_garbage_with_a_value_error(out):
    with pytest.raises(ValueError, match="choices"):
        chat_reply(out, 0.0)


def test_chat_reply_reads_odd_but_valid_replies():
    reply = chat_reply(completion(None), 0.0)
    assert reply["text"] == "" and reply["top_logprobs"] == {}
    reply = chat_reply(completion("B", logprobs={"A": -1.0, "B": -0.5}), 0.0)
    assert reply["text"] == "B" and reply["top_logprobs"] == {"A": -1.0, "B": -0.5}
    out = completion("A")
    out["choices"][0]["logprobs"] = {"content": [{"top_logprobs": [{"token": 1, "logprob": "x"}, None]}]}
    assert chat_reply(out, 0.0)["top_logprobs"] == {}


def test_garbage_judge_replies_are_unparsable_retried_and_the_evaluation_goes_on(tmp_path):
    from teachfit.evaluate.pairwise import Judgments
    from teachfit.models.judges import OpenAIJudge
    from teachfit.models import ModelSpec

    server = FakeServer(reply="My final verdict is [[A>B]]", lifetime=60)
    try:
        # max_retries=0: each garbage reply reaches Judgments, which must count it and ask again
        judge = OpenAIJudge(ModelSpec("openai", f"j@{server.url}"), constraint="none", max_retries=0, backoff=0.01,
                            timeout=1.0)
        config = JudgeConfig.load("arena_hard")
        judgments = Judgments(judge, config, tmp_path / "cache", concurrency=1)
        parse = lambda r: parse_verdict(r.get("text", ""), config.verdict_pattern)  # noqa: E731
        job = ([{"role": "user", "content": "judge this"}], False, parse)
        server.script = ["nochoices", "cut_json"]
        first = judgments.run([job])[0]
        assert first["parsed"] == "A>B" and first["attempts"] == 3 and len(first["unparsable"]) == 2
        server.default = "garbage"
        other = ([{"role": "user", "content": "and this"}], False, parse)
        second = judgments.run([other])[0]  # every attempt fails: unparsable, no exception
        assert second["parsed"] is None and second["attempts"] == config.retries + 1 and second.get("error")
        assert judgments.run([job])[0]["cached"] is True  # the good one was cached, the failed one was not
    finally:
        server.stop()
