"""The GPU paths that a CPU can check (issue: the GPU paths, checked against the libraries' source):
the decisions are unit-tested here; what needs a GPU to show is said in the code."""
from pathlib import Path

import pytest

from conftest import write_pairs
from teachfit.records import InputError


def test_a_vllm_model_larger_than_a_ray_worker_is_refused_at_its_line(tmp_path):
    from teachfit.experiment import load_experiment

    write_pairs(tmp_path / "i.jsonl", [{"instruction": "Hi?"}])
    path = tmp_path / "study.yaml"
    path.write_text("executor: {type: ray, num_workers: 2, num_gpus_per_worker: 1}\ngenerate:\n  instructions: [i.jsonl]\n"
                    "  teacher:\n    - vllm:org/Big?tensor_parallel_size=4\n")
    with pytest.raises(InputError) as error:
        load_experiment(path)
    assert error.value.line == 5 and "needs 4 GPUs" in str(error.value) and "has 1" in str(error.value)
    path.write_text(path.read_text().replace("num_gpus_per_worker: 1", "num_gpus_per_worker: 4"))
    assert load_experiment(path).executor.num_gpus_per_worker == 4


@pytest.mark.parametrize("capability, dtype", [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"),
                                               ((8, 6), "bfloat16"), ((9, 0), "bfloat16")])
def test_bf16_only_on_gpus_that_have_it(capability, dtype):
    """V100 (7.0) and T4 (7.5) report bf16 support but emulate it: fp16 there, bf16 from Ampere (8.0) on."""
    from teachfit.models.hf import gpu_dtype

    assert gpu_dtype(capability) == dtype


def test_one_model_at_a_time_each_released_before_the_next_loads(tmp_path, tiny_llama, tiny_chatml, tiny_gpt2):
    """Student, reference and judge reward each run over all pairs, one after another: while one
    scorer's model is loaded, no other scorer holds one (a vLLM student at 0.9 of a GPU beside a
    reference could not fit). The rows equal a run whose scorers were all loaded at once."""
    from conftest import PAIRS
    from teachfit.config import ScoreConfig
    from teachfit.files import read_pairs
    from teachfit.score.engine import score_files
    from teachfit.score.scorers import build_scorers

    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    config = ScoreConfig(student=[f"hf:{tiny_llama}"], reference=f"hf:{tiny_gpt2}", reward_model=f"hf:{tiny_chatml}",
                         reward_kind="judge", dtype="float32", progress=False, window=2)
    scorers = build_scorers(f"hf:{tiny_llama}", config, [data])
    loaded_together = []
    for scorer in scorers:
        if hasattr(scorer, "_build"):
            def build(scorer=scorer, original=scorer._build):
                loaded_together.append([s for s in scorers if getattr(s, "_scorer", None) is not None])
                return original()
            scorer._build = build
    score_files([data], tmp_path / "s.parquet", f"hf:{tiny_llama}", config, tmp_path / "cache", scorers=scorers)
    assert len(loaded_together) == 3 and all(others == [] for others in loaded_together)
    assert all(getattr(s, "_scorer", None) is None for s in scorers)  # the last one is released too

    together = build_scorers(f"hf:{tiny_llama}", config, [data])
    for scorer in together:
        if hasattr(scorer, "release"):
            scorer.release = lambda: None  # the old behaviour: every model stays loaded
    from teachfit.files import read_table

    score_files([data], tmp_path / "t.parquet", f"hf:{tiny_llama}", config, tmp_path / "cache2", scorers=together)
    assert read_table(tmp_path / "s.parquet")[0] == read_table(tmp_path / "t.parquet")[0]
    assert len(list(read_pairs([data]))) == len(read_table(tmp_path / "s.parquet")[0])


class InProcessShards:
    """An executor of 2 'workers' in this process whose models run in bfloat16 (as GPU workers
    would) while the driver's own choice is float32: the driver must key the cache with the
    workers' dtype, or it finds none of their results and computes everything again itself."""

    world_size = 2

    def __init__(self, monkeypatch):
        self.monkeypatch, self.loads_after_workers = monkeypatch, None

    def map(self, function, tasks):
        from teachfit.models import LOAD_COUNTS, hf

        with self.monkeypatch.context() as patch:
            patch.setattr(hf, "dtype_name", lambda dtype, device="auto": "bfloat16")
            results = [function(task) for task in tasks]
        self.loads_after_workers = dict(LOAD_COUNTS)
        return results


def test_the_driver_keys_the_cache_with_the_workers_dtype(tmp_path, tiny_llama, monkeypatch):
    from conftest import PAIRS
    from teachfit.config import ScoreConfig
    from teachfit.files import read_table
    from teachfit.models import LOAD_COUNTS, hf
    from teachfit.run import RunDir
    from teachfit.score.stage import run_score

    monkeypatch.setattr(hf, "dtype_name", lambda dtype, device="auto": "float32")  # the driver (no GPU)
    run = RunDir(tmp_path / "run")
    run.responses_dir.mkdir(parents=True)
    write_pairs(run.responses("t"), PAIRS)
    config = ScoreConfig(student=[f"hf:{tiny_llama}"], metrics=["ppl_self"], dtype="auto", progress=False, window=2)
    executor = InProcessShards(monkeypatch)
    run_score(config, run, executor)
    assert executor.loads_after_workers is not None and LOAD_COUNTS == executor.loads_after_workers  # driver loaded nothing
    rows, _ = read_table(run.scores(Path(tiny_llama).name))
    assert len(rows) == len(PAIRS)
    assert all("bfloat16" in marker.read_text() for marker in (run.root / ".markers" / "score").glob("*.done"))


def test_the_lm_head_chunk_is_sized_per_device():
    """32 rows of Gemma's 262k vocabulary per LM-head matmul on a GPU re-read its 1.2 GB embedding
    32 rows at a time; there a chunk holds 1024 rows. On a CPU the small chunk stays (measured faster)."""
    from teachfit.forward import head_chunk_rows

    assert head_chunk_rows(262_144, "cpu") == 32 and head_chunk_rows(262_144, "cuda:0") == 1024
    assert head_chunk_rows(50_257, "cpu") == 166 and head_chunk_rows(10 ** 12, "cuda") == 1


@pytest.mark.parametrize("device, device_map, inputs", [("cuda", "auto", "cuda:0"), ("cuda:1", {"": "cuda:1"}, "cuda:1"),
                                                        ("cpu", None, "cpu")])
def test_weights_load_straight_onto_the_gpus(device, device_map, inputs):
    from teachfit.models.hf import placement

    assert placement(device) == (device_map, inputs)


class FakeCuda:
    """torch.cuda as a machine with GPUs of one compute capability shows it."""

    def __init__(self, gpus: int, capability: tuple):
        self.gpus, self.capability, self.asked = gpus, capability, []

    def is_available(self) -> bool:
        return self.gpus > 0

    def get_device_capability(self, index: int) -> tuple:
        self.asked.append(index)
        return self.capability


@pytest.mark.parametrize("environ, gpus, capability, placed", [
    ({}, 0, None, ("cpu", "float32")),
    ({}, 1, (9, 0), ("cuda:0", "bfloat16")),
    ({"LOCAL_RANK": "3", "WORLD_SIZE": "4"}, 4, (8, 0), ("cuda:3", "bfloat16")),  # each rank on its own GPU
    ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, 2, (7, 0), ("cuda:1", "float32")),   # V100: no bf16
])
def test_each_training_process_loads_onto_its_own_gpu(environ, gpus, capability, placed):
    from types import SimpleNamespace

    from teachfit.train import training_placement

    cuda = FakeCuda(gpus, capability)
    assert training_placement(environ, SimpleNamespace(cuda=cuda)) == placed
    assert cuda.asked == ([int(environ.get("LOCAL_RANK", 0))] if gpus else [])
