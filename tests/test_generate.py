"""Generation: instructions, teacher specs, resume, N samples, transformers and llama.cpp backends."""
import json

import pytest

from conftest import CHATML, write_pairs
from teachfit.generate import TeacherRequest, answer_all, generate, parse_teacher, read_done
from teachfit.teachers import dataset_name
from teachfit.instructions import read_instructions
from teachfit.models.base import Generation, GenerationSettings
from teachfit.records import InputError


def instructions_file(tmp_path, n=5):
    return write_pairs(tmp_path / "instr.jsonl", [{"id": f"q{i}", "instruction": f"Question {i}?"} for i in range(n)])


def test_instruction_errors_name_file_and_line(tmp_path):
    path = write_pairs(tmp_path / "i.jsonl", [{"instruction": "A?"}, {"instruction": "  "}])
    with pytest.raises(InputError, match=r"i.jsonl:2: empty instruction"):
        read_instructions([path])
    path = write_pairs(tmp_path / "d.jsonl", [{"instruction": "A?"}, {"instruction": "B?"}, {"instruction": "A?"}])
    with pytest.raises(InputError, match=r"d.jsonl:3: duplicate instruction \(first at .*d.jsonl:1\)"):
        read_instructions([path])
    path = write_pairs(tmp_path / "m.jsonl", [{"instruction": "A?"}, '{"instruction": '])
    with pytest.raises(InputError, match="m.jsonl:2: malformed JSON"):
        read_instructions([path])
    skipped = []
    assert len(read_instructions([path], skip_invalid=True, skipped=skipped)) == 1 and skipped[0]["line"] == 2
    arena = write_pairs(tmp_path / "q.jsonl", [{"question_id": "x1", "turns": [{"content": "Hi?"}]}])
    assert read_instructions([arena])[0].id == "x1"


def test_teacher_spec_settings_and_names():
    defaults = GenerationSettings(max_new_tokens=64)
    greedy = parse_teacher("packaged:smollm2-135m-instruct", defaults)
    sampled = parse_teacher("packaged:smollm2-135m-instruct?temperature=0.8&top_p=0.95", defaults)
    samples = parse_teacher("hf:org/Model-7B?n=5&temperature=0.8", defaults)
    assert greedy.name == "smollm2-135m-instruct" and greedy.settings.temperature == 0
    assert sampled.name == "smollm2-135m-instruct-t0.8-p0.95" and sampled.settings.max_new_tokens == 64
    assert samples.name == "Model-7B-t0.8-p1-n5" and samples.settings.n == 5
    assert parse_teacher("openai:gpt-4o@http://127.0.0.1:8000/v1?name=g4", defaults).name == "g4"
    keyed = parse_teacher("openai:gpt-4o@http://127.0.0.1:8000/v1?key_env=MY_KEY&temperature=0.5", defaults)
    assert keyed.spec.endswith("?key_env=MY_KEY") and keyed.settings.temperature == 0.5  # the key's name, not its value
    assert keyed.name == "gpt-4o-t0.5-p1"
    with pytest.raises(ValueError, match="unknown setting 'temp'"):
        parse_teacher("hf:x?temp=1", defaults)
    with pytest.raises(ValueError, match="unknown setting 'select'"):  # picking among samples is `teachfit select`
        parse_teacher("hf:x?n=2&select=worst", defaults)
    for name in ("../../x", "/tmp/v", "a/b", ".hidden"):  # a dataset name never leaves the run directory
        with pytest.raises(ValueError, match="cannot be used as a dataset name"):
            parse_teacher(f"hf:x?name={name}", defaults)


class ScriptedTeacher:
    """A deterministic backend with scripted failures, to test the loop itself."""

    batch_size = 2

    def __init__(self, fail_ids=()):
        self.fail_ids, self.calls = set(fail_ids), 0

    def describe(self):
        return {"backend": "scripted"}

    def generate(self, conversations, settings, seeds):
        self.calls += len(conversations)
        out = []
        for messages, seed in zip(conversations, seeds):
            text = messages[0]["content"]
            if any(f in text for f in self.fail_ids):
                out.append(Generation(error="RuntimeError: boom"))
            else:
                out.append(Generation(text=f"answer to {text} ({seed % 7})", finish_reason="stop", completion_tokens=3))
        return out


def test_resume_retries_errors_and_answers_each_once(tmp_path):
    items = read_instructions([instructions_file(tmp_path)])
    request = TeacherRequest("scripted", GenerationSettings(n=2, temperature=0.7), "s")
    path = tmp_path / "run" / "s.jsonl"
    first = ScriptedTeacher(fail_ids=["Question 3"])
    stats = answer_all(items, request, path, lambda spec: first, show_progress=False)
    assert stats["errors"] == 2 and first.calls == 10
    with path.open("a") as handle:
        handle.write('{"id": "torn')  # a kill mid-write
    second = ScriptedTeacher()
    stats = answer_all(items, request, path, lambda spec: second, show_progress=False)
    assert second.calls == 2 and stats["errors"] == 0  # only the failed ones again
    records = [json.loads(line) for line in path.open()]
    assert sorted((r["instruction_id"], r["sample"]) for r in records) == sorted(
        (f"q{i}", k) for i in range(5) for k in range(2))
    assert records[0]["id"] == "q0#s0" and records[0]["gen_response_configs"]["temperature"] == 0.7
    third = ScriptedTeacher()
    answer_all(items, request, path, lambda spec: third, show_progress=False)
    assert third.calls == 0


def test_hf_teacher_generates_with_its_chat_template(tmp_path, tiny_chatml):
    items = read_instructions([instructions_file(tmp_path, 3)])
    requests = [parse_teacher(f"hf:{tiny_chatml}?name=tiny", GenerationSettings(max_new_tokens=5)),
                parse_teacher(f"hf:{tiny_chatml}?temperature=1.0&name=tiny-sampled", GenerationSettings(max_new_tokens=5))]
    summaries = generate(items, requests, tmp_path / "run", {"dtype": "float32"}, show_progress=False)
    assert [s["generated"] for s in summaries] == [3, 3]
    records = [json.loads(l) for l in (tmp_path / "run" / "responses" / "tiny.jsonl").open()]
    assert all(r["completion_tokens"] <= 5 and r["backend"]["backend"] == "hf" for r in records)
    # greedy decoding is reproducible
    from teachfit.models import load
    teacher = load("teacher", f"hf:{tiny_chatml}", dtype="float32")
    again = teacher.generate([[{"role": "user", "content": "Question 0?"}]], GenerationSettings(max_new_tokens=5), [0])
    assert again[0].text == records[0]["response"]


@pytest.mark.packaged("llama_cpp")
def test_llamacpp_teacher_with_a_packaged_gguf(tmp_path):
    items = read_instructions([instructions_file(tmp_path, 2)])
    request = parse_teacher("packaged:smollm2-135m-instruct", GenerationSettings(max_new_tokens=8))
    summary = generate(items, [request], tmp_path / "run", {"n_ctx": 512}, show_progress=False)[0]
    assert summary["generated"] == 2
    records = [json.loads(l) for l in (tmp_path / "run" / "responses" / f"{request.name}.jsonl").open()]
    assert all(r["response"].strip() and 0 < r["completion_tokens"] <= 8 for r in records)
    assert records[0]["backend"]["backend"] == "llamacpp"


def test_answers_of_another_spec_or_max_new_tokens_are_made_again(tmp_path, tiny_chatml):
    """Resuming reuses only what the request would make: a stored answer whose `model` differs
    (e.g. other vLLM engine options in the spec) or made with another max_new_tokens is regenerated;
    the file ends with one record per instruction, all of the request's."""
    from teachfit.models import load

    items = read_instructions([instructions_file(tmp_path, 3)])
    spec, path, loaded = f"hf:{tiny_chatml}", tmp_path / "answers.jsonl", []

    def loader(name):
        loaded.append(name)
        return load("teacher", name, dtype="float32")

    request = TeacherRequest(spec, GenerationSettings(max_new_tokens=3), "tiny")
    assert answer_all(items, request, path, loader, show_progress=False)["generated"] == 3
    records = [json.loads(l) for l in path.open()]
    records[1]["model"] = f"{spec}?tensor_parallel_size=2"  # made with other engine options
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = answer_all(items, request, path, loader, show_progress=False)
    assert stats["already_done"] == 2 and stats["generated"] == 1
    again = [json.loads(l) for l in path.open()]
    assert [r["instruction_id"] for r in again] == ["q0", "q1", "q2"] and {r["model"] for r in again} == {spec}
    assert answer_all(items, request, path, loader, show_progress=False)["generated"] == 0 and len(loaded) == 2
    longer = TeacherRequest(spec, GenerationSettings(max_new_tokens=4), "tiny")
    assert len(read_done(path, longer)) == 0 and len(read_done(path)) == 3
    stats = answer_all(items, longer, path, loader, show_progress=False)
    assert stats["already_done"] == 0 and stats["generated"] == 3
    assert {json.loads(l)["gen_response_configs"]["max_new_tokens"] for l in path.open()} == {4}
    more = TeacherRequest(spec, GenerationSettings(max_new_tokens=4, n=2), "tiny")  # n alone: sample 0 is kept
    assert len(read_done(path, more)) == 3


def test_a_sampled_answer_does_not_depend_on_its_batch_and_draws_from_the_model(tiny_chatml):
    """HFTeacher seeds each row's draws (Gumbel-max with a per-row generator): the same conversation
    and seed give the same answer alone or in a batch of others; and the first token's frequencies
    over many seeds match the model's softmax (an exact sampler, checked against torch)."""
    import torch

    from teachfit.models import load

    teacher = load("teacher", f"hf:{tiny_chatml}", dtype="float32", batch_size=64)
    settings = GenerationSettings(temperature=1.0, top_p=1.0, max_new_tokens=6)
    ask = [[{"role": "user", "content": f"Tell me about {w}."}] for w in ("cats", "the sea", "numbers")]
    together = [g.text for g in teacher.generate(ask, settings, [11, 12, 13])]
    alone = [teacher.generate([m], settings, [s])[0].text for m, s in zip(ask, [11, 12, 13])]
    reordered = [g.text for g in teacher.generate(ask[::-1], settings, [13, 12, 11])][::-1]
    assert together == alone == reordered
    greedy = [g.text for g in teacher.generate(ask, GenerationSettings(max_new_tokens=6), [11, 12, 13])]
    assert together != greedy

    from teachfit.models.hf import seeded_sampler

    n = 4000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    for top_p in (1.0, 0.8):  # at temperature 0.7 the probabilities are 0.737, 0.177, 0.087, ...: top-p 0.8 keeps 2
        rows = seeded_sampler(0.7, top_p, range(n), "cpu")(None, logits.repeat(n, 1))
        drawn = torch.bincount(rows.argmax(-1), minlength=5).double() / n
        expected = torch.softmax(logits / 0.7, -1).double()
        kept = int((expected.cumsum(0) < top_p).sum()) + 1  # the smallest prefix (sorted) reaching top_p
        expected[kept:] = 0
        expected /= expected.sum()
        assert torch.all((drawn - expected).abs() <= 5 * (expected * (1 - expected) / n).sqrt() + 1e-9), (drawn, expected)
