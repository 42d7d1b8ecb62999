"""The embedded default: the shipped instruction set and the stored teacher responses."""
from collections import Counter

from teachfit.demo import TEACHERS, demo_instructions_path, pick_subset, stored_responses
from teachfit.generate import parse_teacher
from teachfit.instructions import read_instructions
from teachfit.models.base import GenerationSettings
from teachfit.records import read_pairs


def test_shipped_instructions_cover_the_paper_categories():
    items = read_instructions([demo_instructions_path()])
    assert len(items) == 60
    assert set(Counter(i.category for i in items).values()) == {5}  # 12 categories x 5
    subset = pick_subset(items, 2)
    assert len(subset) == 24 and set(Counter(i.category for i in subset).values()) == {2}


def test_stored_responses_are_valid_pairs_with_their_generation_record():
    names = {parse_teacher(t, GenerationSettings()).name for t in TEACHERS}
    files = stored_responses()
    assert {p.stem for p in files} == names
    pairs = list(read_pairs(files))
    assert len(pairs) == 24 * len(names)
    for pair in pairs:
        assert pair.extra["gen_response_configs"]["max_new_tokens"] == 256
        assert pair.extra["backend"]["backend"] == "llamacpp" and pair.extra["model"].startswith("packaged:")
    sampled = [p for p in pairs if p.teacher.endswith("-t0.8-p0.95")]
    assert all(p.extra["gen_response_configs"]["temperature"] == 0.8 for p in sampled)
