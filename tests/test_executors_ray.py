"""The Ray executor on a real local cluster (one per module, always shut down): scores and
generations equal the local executor's, with one completion marker per shard."""
import json
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import write_study  # noqa: E402
from teachfit.records import read_table  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_results_equal_local(tmp_path, cluster, tiny_llama, tiny_chatml):
    from teachfit.pipeline import run_experiment

    local = write_study(tmp_path / "local", tiny_llama, tiny_chatml, "local")
    distributed = write_study(tmp_path / "ray", tiny_llama, tiny_chatml, "{type: ray, num_workers: 2}")
    started = time.perf_counter()
    run_experiment(local, show=lambda *_: None)
    local_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run_experiment(distributed, show=lambda *_: None)
    ray_seconds = time.perf_counter() - started
    print(f"local {local_seconds:.1f}s, ray (2 workers, cluster already up) {ray_seconds:.1f}s")
    name = f"{Path(tiny_llama).name}.parquet"
    local_rows = read_table(tmp_path / "local" / "study" / "scores" / name)[0]
    ray_rows = read_table(tmp_path / "ray" / "study" / "scores" / name)[0]
    assert local_rows == ray_rows  # bit for bit
    texts = [(tmp_path / d / "study" / "responses" / "t.jsonl").read_text().splitlines() for d in ("local", "ray")]
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("seconds", "backend")}  # noqa: E731
    assert [strip(l) for l in texts[0]] == [strip(l) for l in texts[1]]
    markers = list((tmp_path / "ray" / "study" / ".markers" / "score").glob("*.done"))
    assert len(markers) == 2  # one completion marker per shard


def test_score_command_with_the_ray_executor(tmp_path, cluster, tiny_llama, tiny_chatml):
    """`teachfit score RUN --executor ray` (its own cluster, in a subprocess) equals the local scores."""
    import subprocess
    import sys

    from teachfit.pipeline import run_experiment

    path = write_study(tmp_path / "a", tiny_llama, tiny_chatml, "local")
    run_experiment(path, show=lambda *_: None)
    run = tmp_path / "a" / "study"
    result = subprocess.run([sys.executable, "-m", "teachfit.cli", "score", str(run), "--student", f"hf:{tiny_llama}",
                             "--dtype", "float32", "--window", "3", "--out", str(tmp_path / "ray.parquet"),
                             "--metrics", "ppl_self,rsr_self,length",  # what the study computed (no IFD stage)
                             "--executor", "ray", "--num-workers", "2", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    name = f"{Path(tiny_llama).name}.parquet"
    assert read_table(tmp_path / "ray.parquet")[0] == read_table(run / "scores" / name)[0]
    assert len(list((run / ".markers" / "score").glob("*.done"))) == 2
