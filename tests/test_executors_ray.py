"""The Ray executor on a real local cluster (one per module, always shut down): scores and
generations equal an independent local run's (its own run directory and cache), with one
completion marker per shard, and the workers did the work: the driver loads no model and puts
no computed result into any cache (its pass after the shards finds every pair cached)."""
import json
import shutil
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import write_study  # noqa: E402
from teachfit.files import read_table


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class DriverWatch:
    """What this process (the Ray driver; Ray runs tasks in worker processes) loads and computes:
    models loaded (teachfit.models.LOAD_COUNTS) and results put into a result cache (every
    computed pair goes there: ResultCache.put_many)."""

    def __init__(self, monkeypatch):
        from teachfit.models import LOAD_COUNTS
        from teachfit.store import ResultCache

        self.counts, self.loads_before, self.computed = LOAD_COUNTS, dict(LOAD_COUNTS), []
        put_many = ResultCache.put_many

        def recording(cache, items):
            items = list(items)
            self.computed.extend(key for key, _ in items)
            return put_many(cache, items)

        monkeypatch.setattr(ResultCache, "put_many", recording)

    def loads(self) -> dict:
        return {role: n - self.loads_before.get(role, 0) for role, n in self.counts.items()
                if n != self.loads_before.get(role, 0)}


def test_ray_results_equal_local(tmp_path, cluster, tiny_llama, tiny_chatml, monkeypatch):
    from teachfit.pipeline import run_experiment

    local = write_study(tmp_path / "local", tiny_llama, tiny_chatml, "local", sampled=True)
    distributed = write_study(tmp_path / "ray", tiny_llama, tiny_chatml, "{type: ray, num_workers: 2}", sampled=True)
    started = time.perf_counter()
    run_experiment(local, show=lambda *_: None)
    local_seconds = time.perf_counter() - started
    driver = DriverWatch(monkeypatch)  # from here on: the Ray run, whose driver must only plan and merge
    started = time.perf_counter()
    run_experiment(distributed, show=lambda *_: None)
    ray_seconds = time.perf_counter() - started
    print(f"local {local_seconds:.1f}s, ray (2 workers, cluster already up) {ray_seconds:.1f}s")
    assert driver.loads() == {}, f"the driver loaded models itself: {driver.loads()}"
    assert driver.computed == [], f"the driver computed {len(driver.computed)} results the workers left"
    name = f"{Path(tiny_llama).name}.parquet"
    local_rows = read_table(tmp_path / "local" / "study" / "scores" / name)[0]
    ray_rows = read_table(tmp_path / "ray" / "study" / "scores" / name)[0]
    assert len(ray_rows) == 16 and local_rows == ray_rows  # bit for bit, each computed in its own cache
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("seconds", "backend")}  # noqa: E731
    for dataset in ("t", "s"):  # greedy, and sampled: each answer seeded by (seed, instruction, sample)
        texts = [(tmp_path / d / "study" / "responses" / f"{dataset}.jsonl").read_text().splitlines() for d in ("local", "ray")]
        assert sorted(map(json.dumps, map(strip, texts[0]))) == sorted(map(json.dumps, map(strip, texts[1])))
    markers = list((tmp_path / "ray" / "study" / ".markers" / "score").glob("*.done"))
    assert len(markers) == 2  # one completion marker per shard
    # each worker wrote its own cache shard for each scorer (16 pairs in windows of 3: ranks get 3 windows each)
    for folder in (tmp_path / "ray" / "study" / ".cache" / "scores").iterdir():
        assert len(list(folder.glob("shard-*.jsonl"))) == 2, folder


GUARDED_CLI = """import json, sys
from teachfit.models import LOAD_COUNTS
from teachfit.store import ResultCache
computed, put_many = [], ResultCache.put_many
def recording(cache, items):
    items = list(items)
    computed.extend(key for key, _ in items)
    return put_many(cache, items)
ResultCache.put_many = recording
report, sys.argv = sys.argv[1], ["teachfit"] + sys.argv[2:]
from teachfit.cli import main
try:
    main()
finally:
    with open(report, "w") as handle:
        json.dump({"loads": LOAD_COUNTS, "computed": len(computed)}, handle)
"""


def test_score_command_with_the_ray_executor(tmp_path, cluster, tiny_llama, tiny_chatml):
    """`teachfit score RUN --executor ray` (its own cluster, in a subprocess) on a copy of a local
    run without its cache equals the local scores; the subprocess's driver loads and computes nothing."""
    import subprocess
    import sys

    from teachfit.pipeline import run_experiment

    path = write_study(tmp_path / "a", tiny_llama, tiny_chatml, "local")
    run_experiment(path, show=lambda *_: None)
    local_run, ray_run = tmp_path / "a" / "study", tmp_path / "b" / "study"
    shutil.copytree(local_run, ray_run, ignore=shutil.ignore_patterns(".cache", ".markers", "scores"))
    assert not (ray_run / ".cache").exists()  # the Ray run starts from the responses alone
    script, report = tmp_path / "guarded_cli.py", tmp_path / "driver.json"
    script.write_text(GUARDED_CLI)
    result = subprocess.run([sys.executable, str(script), str(report), "score", str(ray_run),
                             "--student", f"hf:{tiny_llama}",
                             "--dtype", "float32", "--window", "3", "--out", str(tmp_path / "ray.parquet"),
                             "--metrics", "ppl_self,rsr_self,length",  # what the study computed (no IFD stage)
                             "--executor", "ray", "--num-workers", "2", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    driver = json.loads(report.read_text())
    assert driver == {"loads": {}, "computed": 0}, driver  # the workers did all of it
    name = f"{Path(tiny_llama).name}.parquet"
    ray_rows = read_table(tmp_path / "ray.parquet")[0]
    assert len(ray_rows) == 8 and ray_rows == read_table(local_run / "scores" / name)[0]
    assert len(list((ray_run / ".markers" / "score").glob("*.done"))) == 2


def test_workers_without_gpus_see_none_and_each_task_gets_a_fresh_process(cluster):
    """num_gpus_per_worker 0: CUDA_VISIBLE_DEVICES is empty in the task (Ray leaves it alone there,
    so every worker would pick cuda:0); max_calls=1: no task runs in a process a model was loaded in."""
    from teachfit.config import ExecutorConfig
    from teachfit.executors.ray import RayExecutor

    def _worker_view(_task):  # defined here: Ray ships it by value (a test module is not importable there)
        import os

        return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")

    executor = RayExecutor(ExecutorConfig(type="ray", num_workers=1))
    first = executor.map(_worker_view, [0])
    second = executor.map(_worker_view, [0])
    assert first[0][1] == "" and second[0][1] == ""
    assert first[0][0] != second[0][0]  # the first task's process ended with it
