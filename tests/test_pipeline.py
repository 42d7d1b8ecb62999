"""`teachfit run experiment.yaml` end to end on tiny models built here: every stage, a second run
that loads nothing, a new beta that re-ranks only, a new teacher generated and scored alone."""
import csv
import json
from pathlib import Path

import pytest

from conftest import write_pairs
from teachfit.models import LOAD_COUNTS
from teachfit.pipeline import run_experiment

INSTRUCTIONS = [{"id": f"i{k}", "instruction": text, "category": "c"} for k, text in enumerate(
    ["Write a short poem about the sea.", "Explain recursion to a child.", "What is 2 + 2?",
     "List three fruits.", "Give me advice on learning to code."])]


def write_experiment(folder: Path, student: str, teachers: list, beta: float = 3.0, more: str = "") -> Path:
    write_pairs(folder / "instructions.jsonl", INSTRUCTIONS)
    teacher_lines = "\n".join(f"    - {t}" for t in teachers)
    path = folder / "study.yaml"
    path.write_text(f"""run_dir: run
generate:
  instructions: [instructions.jsonl]
  max_new_tokens: 6
  dtype: float32
  progress: false
  teacher:
{teacher_lines}
score:
  student: hf:{student}
  reward_model: hf:{student}
  reward_kind: judge
  dtype: float32
  progress: false
rank:
  beta: {beta}
  bootstrap: 50
{more}""")
    return path


IFEVAL_SAMPLE = Path(__file__).parent / "data" / "ifeval_sample.jsonl"


def loads() -> int:
    return sum(LOAD_COUNTS.values())


def cached_lines(run: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (run / ".cache" / "scores").rglob("shard-*.jsonl"))


@pytest.mark.packaged("llama_cpp")  # the judge of the first bench is the packaged SmolLM2
def test_every_stage_then_a_second_run_loads_nothing(tmp_path, tiny_llama, tiny_chatml):
    bench = write_pairs(tmp_path / "bench.jsonl", [{"id": "b0", "instruction": "Name a fruit."},
                                                    {"id": "b1", "instruction": "Name a colour."}])
    baseline = write_pairs(tmp_path / "baseline.jsonl", [{"id": "b0", "output": "Apple."}, {"id": "b1", "output": "Red."}])
    more = f"""select:
  - {{by: car-instance}}
train:
  max_steps: 1
  warmup_steps: 0
  effective_batch_size: 1
  save_steps: 10
  max_length: 128
  progress: false
evaluate:
  - judge: packaged:smollm2-135m-instruct
    bench: {bench}
    baseline: {baseline}
    max_new_tokens: 4
    n_ctx: 1024
    dtype: float32
    progress: false
  - bench: ifeval                          # judge-free, a second bench per checkpoint
    ifeval_prompts: {IFEVAL_SAMPLE}
    limit: 3
    max_new_tokens: 4
    dtype: float32
    progress: false
correlate:
  bootstrap: 20
report: {{}}
"""
    path = write_experiment(tmp_path, tiny_llama, [f"hf:{tiny_chatml}?name=greedy",
                                                   f"hf:{tiny_chatml}?temperature=1.0&name=sampled"], more=more)
    first = run_experiment(path, show=lambda *_: None)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "responses").glob("*.jsonl")) == ["greedy.jsonl", "sampled.jsonl"]
    assert (run / "scores" / f"{Path(tiny_llama).name}.parquet").exists()
    assert (run / "selections" / "car-instance.jsonl").exists()
    ranking = json.loads((run / "ranking.json").read_text())
    assert {t["teacher"] for r in ranking.values() for t in r["teachers"]} == {"greedy", "sampled"}
    assert {t["teacher"] for r in ranking.values() for t in r["selections"]} == {"car-instance"}  # beside, not among
    assert len(list((run / "checkpoints").iterdir())) == 3  # one student x (2 teachers + 1 selection)
    results = list(csv.DictReader((run / "results.csv").open()))
    assert sorted(r["bench"] for r in results) == ["bench"] * 3 + ["ifeval"] * 3  # 3 checkpoints x 2 benches
    assert all(r["ifeval_prompt_strict"] != "" for r in results if r["bench"] == "ifeval")
    assert (run / "correlation.csv").exists() and (run / "report.html").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["sections"]["rank"]["beta"] == 3.0 and "torch" in manifest["versions"]
    assert set(first["stages"]) >= {"generate", f"score-{Path(tiny_llama).name}", "rank", "correlate", "report"}

    before, lines = loads(), cached_lines(run)
    messages = []
    run_experiment(path, show=messages.append)
    assert [m for m in messages if "running" in m] == []
    assert loads() == before  # nothing loaded: every stage's marker says it is done
    assert all("done (unchanged)" in m for m in messages if m.startswith("["))
    assert cached_lines(run) == lines


def test_new_beta_reranks_only_and_a_new_teacher_is_generated_and_scored_alone(tmp_path, tiny_llama, tiny_chatml):
    teachers = [f"hf:{tiny_chatml}?name=greedy", f"hf:{tiny_chatml}?temperature=1.0&name=sampled"]
    path = write_experiment(tmp_path, tiny_llama, teachers)
    run_experiment(path, show=lambda *_: None)
    run = tmp_path / "run"
    pairs = 2 * len(INSTRUCTIONS)
    assert cached_lines(run) == 3 * pairs  # student, judge and length: every pair once
    greedy = (run / "responses" / "greedy.jsonl").read_bytes()

    write_experiment(tmp_path, tiny_llama, teachers, beta=1.0)
    before, ran = dict(LOAD_COUNTS), []
    run_experiment(path, show=ran.append)
    assert LOAD_COUNTS == before
    assert [m for m in ran if "running" in m] == ["[rank] running (its settings or inputs changed)"]
    ranking = json.loads((run / "ranking.json").read_text())
    assert all(r["settings"]["beta"] == 1.0 for r in ranking.values())

    write_experiment(tmp_path, tiny_llama, teachers + [f"hf:{tiny_llama}?name=third"], beta=1.0)
    before = dict(LOAD_COUNTS)
    run_experiment(path, show=lambda *_: None)
    assert LOAD_COUNTS.get("teacher", 0) - before.get("teacher", 0) == 1  # only the new teacher was loaded
    assert cached_lines(run) == 3 * (pairs + len(INSTRUCTIONS))  # only its pairs were scored
    assert (run / "responses" / "greedy.jsonl").read_bytes() == greedy
    teachers_ranked = {t["teacher"] for r in json.loads((run / "ranking.json").read_text()).values() for t in r["teachers"]}
    assert teachers_ranked == {"greedy", "sampled", "third"}


def test_dry_run_plans_without_running(tmp_path, tiny_llama, tiny_chatml):
    path = write_experiment(tmp_path, tiny_llama, [f"hf:{tiny_chatml}?name=greedy"])
    before = loads()
    plan = run_experiment(path, dry_run=True)
    assert loads() == before and not (tmp_path / "run").exists()
    rows = {r["stage"]: r for r in plan["plan"]}
    assert rows["generate"]["status"] == "to run" and rows["generate"]["work"].startswith("5 answers to generate")
    run_experiment(path, show=lambda *_: None)
    assert all(r["status"] == "done" for r in run_experiment(path, dry_run=True)["plan"])


def test_best_and_worst_of_n_through_the_select_stage(tmp_path, tiny_llama, tiny_chatml):
    """generate N samples -> score them (judge reward) -> select by reward within that teacher."""
    from teachfit.files import read_table

    more = """select:
  - {by: reward, teacher: s3, name: best3}
  - {by: reward, teacher: s3, worst: true, name: worst3}
"""
    path = write_experiment(tmp_path, tiny_llama, [f"hf:{tiny_chatml}?temperature=1.0&n=3&name=s3"], more=more)
    run_experiment(path, show=lambda *_: None)
    run = tmp_path / "run"
    samples = [json.loads(l) for l in (run / "responses" / "s3.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * len(INSTRUCTIONS) and {s["id"] for s in samples} >= {"i0#s0", "i0#s2"}
    rewards = {r["id"]: r["reward"] for r in read_table(run / "scores" / f"{Path(tiny_llama).name}.parquet")[0]}
    for name, pick in (("best3", max), ("worst3", min)):
        chosen = [json.loads(l) for l in (run / "selections" / f"{name}.jsonl").read_text().splitlines()]
        assert len(chosen) == len(INSTRUCTIONS)
        for record in chosen:
            candidates = [rewards[f"{record['instruction_id']}#s{k}"] for k in range(3)]
            assert rewards[record["id"]] == pick(candidates)
            assert record["messages"][1]["content"] in [s["response"] for s in samples
                                                          if s["instruction_id"] == record["instruction_id"]]
