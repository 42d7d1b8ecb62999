"""The GPU paths that a CPU can check (issue: the GPU paths, checked against the libraries' source):
the decisions are unit-tested here; what needs a GPU to show is said in the code."""
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
