"""The embedded default: the shipped instruction set, the stored teacher responses, the demo experiments."""
from collections import Counter

from teachfit.demo import demo_experiment, demo_instructions_path, stored_responses
from teachfit.experiment import load_experiment
from teachfit.instructions import read_instructions
from teachfit.files import read_pairs
from teachfit.generate import pick_instructions, teacher_requests


def test_shipped_instructions_cover_the_paper_categories():
    items = read_instructions([demo_instructions_path()])
    assert len(items) == 60
    assert set(Counter(i.category for i in items).values()) == {5}  # 12 categories x 5
    live = load_experiment(demo_experiment(live=True))
    subset = pick_instructions(live.stages["generate"])
    assert len(subset) == 24 and set(Counter(i.category for i in subset).values()) == {2}


def test_stored_responses_are_what_the_live_demo_generates():
    live = load_experiment(demo_experiment(live=True))
    names = {r.name for r in teacher_requests(live.stages["generate"])}
    files = stored_responses()
    assert {p.stem for p in files} == names
    stored = load_experiment(demo_experiment(live=False))
    assert sorted(stored.responses) == sorted(map(str, files))
    assert stored.stages["score"].student == live.stages["score"].student == ["packaged:gemma3-270m"]
    pairs = list(read_pairs(files))
    assert len(pairs) == 24 * len(names)
    for pair in pairs:
        assert pair.extra["gen_response_configs"]["max_new_tokens"] == 256
        assert pair.extra["backend"]["backend"] == "llamacpp" and pair.extra["model"].startswith("packaged:")
    sampled = [p for p in pairs if p.teacher.endswith("-t0.8-p0.95")]
    assert all(p.extra["gen_response_configs"]["temperature"] == 0.8 for p in sampled)
