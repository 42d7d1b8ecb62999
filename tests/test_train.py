"""Training: the trained-on tokens are exactly the scored tokens; loss falls; resume; LoRA."""
import csv
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("trl")

from conftest import PAIRS, write_pairs
from teachfit.models import load
from teachfit.files import read_pairs, read_table
from teachfit.config import ScoreConfig as ScoreOptions
from teachfit.score.engine import score_files
from teachfit.template import encode_pair, ensure_chat_template
from teachfit.train import TrainConfig, build_trainer, tokenize_for_training, train_student

FAST = dict(learning_rate=5e-3, warmup_steps=0, effective_batch_size=2, max_length=256, save_steps=2)


def test_labels_are_exactly_the_scored_response_tokens(tmp_path, tiny_chatml):
    loaded = load("causal_lm", f"hf:{tiny_chatml}", dtype="float32")
    pairs = list(read_pairs([write_pairs(tmp_path / "t.jsonl", PAIRS)]))
    rows, counts = tokenize_for_training(pairs, loaded.tokenizer, 256)
    assert counts["pairs"] == 4
    for pair, row in zip(pairs, rows):
        encoded = encode_pair(loaded.tokenizer, pair.instruction, pair.response, 256)
        assert row["input_ids"] == encoded.input_ids
        trained = [i for i, label in enumerate(row["labels"]) if label != -100]
        assert trained == list(range(encoded.response_start, len(encoded.input_ids)))  # no prompt token has loss


def test_trl_loss_equals_teachfit_student_loss(tmp_path, tiny_llama):
    """The mean per-pair loss TRL computes before any update equals L, the mean loss_self of scoring."""
    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    score_files([data], tmp_path / "s.parquet", f"hf:{tiny_llama}", config=ScoreOptions(dtype="float32"))
    rows, _ = read_table(tmp_path / "s.parquet")
    mean_loss = sum(r["loss_self"] for r in rows) / len(rows)
    pairs = list(read_pairs([data]))
    loaded = load("causal_lm", f"hf:{tiny_llama}", dtype="float32")
    trainer, _ = build_trainer(pairs, loaded, tmp_path / "out", TrainConfig(**FAST), False, eval_pairs=pairs)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(mean_loss, abs=1e-4)


def test_training_lowers_loss_changes_every_parameter_and_resumes(tmp_path, tiny_llama):
    data = write_pairs(tmp_path / "t.jsonl", PAIRS + [dict(p, id=p["id"] + "2", response=p["response"] + " Again.")
                                                     for p in PAIRS])  # 8 distinct pairs (duplicates are refused)
    before = {k: v.clone() for k, v in load("causal_lm", f"hf:{tiny_llama}", dtype="float32").model.state_dict().items()}
    out = tmp_path / "ckpt"
    first = train_student([data], f"hf:{tiny_llama}", out, TrainConfig(**FAST, max_steps=2, keep_checkpoints=True),
                          show_progress=False)
    assert first["global_step"] == 2 and (out / "checkpoint-2").exists()
    second = train_student([data], f"hf:{tiny_llama}", out, TrainConfig(**FAST, max_steps=8), show_progress=False)
    assert second["global_step"] == 8
    log = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["step"]) for r in log] == list(range(1, 9))  # resumed at 3, not restarted at 1
    losses = [float(r["loss"]) for r in log]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    after = load("causal_lm", f"hf:{out}", dtype="float32").model.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []
    saved = json.loads((out / "teachfit_train_config.json").read_text())
    assert saved["max_steps"] == 8 and saved["learning_rate"] == 5e-3
    from transformers import AutoTokenizer
    assert "### Instruction:" in AutoTokenizer.from_pretrained(out).chat_template  # the template travels


def test_lora_trains_and_saves_a_merged_model(tmp_path, tiny_llama):
    pytest.importorskip("peft")
    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    out = tmp_path / "lora"
    summary = train_student([data], f"hf:{tiny_llama}", out, TrainConfig(**FAST, max_steps=3, lora=True, lora_r=4),
                            show_progress=False)
    assert summary["global_step"] == 3
    merged = load("causal_lm", f"hf:{out}", dtype="float32").model
    original = load("causal_lm", f"hf:{tiny_llama}", dtype="float32").model
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert changed and all("proj" in k for k in changed)  # only the adapted linear layers moved
    assert not any("lora" in k for k in merged.state_dict())


def test_cli_train_with_yaml_and_errors(tmp_path, tiny_llama):
    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    (tmp_path / "cfg.yaml").write_text("learning_rate: 0.001\nwarmup_steps: 0\neffective_batch_size: 2\nmax_steps: 1\n")
    ok = subprocess.run([sys.executable, "-m", "teachfit.cli", "train", str(data), "--student", f"hf:{tiny_llama}",
                         "--out", str(tmp_path / "o"), "--config", str(tmp_path / "cfg.yaml"), "--no-progress"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "o" / "teachfit_train_config.json").read_text())["learning_rate"] == 0.001
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.1\n")
    bad = subprocess.run([sys.executable, "-m", "teachfit.cli", "train", str(data), "--student", f"hf:{tiny_llama}",
                          "--out", str(tmp_path / "o2"), "--config", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad.yaml:1: unknown key 'learning_rat' (did you mean 'learning_rate'?)" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "teachfit.cli", "train", str(data), "--student", f"hf:{tiny_llama}",
                          "--out", str(tmp_path / "o3"), "--teacher", "nobody"], capture_output=True, text=True)
    assert bad.returncode == 2 and "for teacher 'nobody'" in bad.stderr


KILL_DURING_SAVE = """
import os, signal, sys
import transformers
from teachfit.train import TrainConfig, train_student
original = transformers.Trainer._save_rng_state
def save_rng_then_die(self, output_dir):
    if output_dir.endswith("checkpoint-2"):  # weights and optimizer written, trainer_state.json not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)
transformers.Trainer._save_rng_state = save_rng_then_die
train_student([sys.argv[1]], sys.argv[2], sys.argv[3], TrainConfig(**{fast}, max_steps=3, save_steps=1), show_progress=False)
"""


def test_a_kill_during_a_checkpoint_save_does_not_break_the_next_run(tmp_path, tiny_llama):
    """The killed save leaves checkpoint-2 without trainer_state.json: the next run resumes from
    checkpoint-1, sets checkpoint-2 aside, finishes, removes the resume copies and writes a model
    card naming the base model and the data."""
    data = write_pairs(tmp_path / "t.jsonl", PAIRS)
    out = tmp_path / "ckpt"
    fast = {k: v for k, v in FAST.items() if k != "save_steps"}
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE.format(fast=fast), str(data), f"hf:{tiny_llama}", str(out)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert (out / "checkpoint-1" / "trainer_state.json").exists() and not (out / "checkpoint-2" / "trainer_state.json").exists()
    summary = train_student([data], f"hf:{tiny_llama}", out, TrainConfig(**fast, max_steps=3, save_steps=1), show_progress=False)
    assert summary["global_step"] == 3
    log = [int(r["step"]) for r in csv.DictReader((out / "train_log.csv").open())]
    assert log == [1, 2, 2, 3]  # the killed run logged steps 1 and 2; the next one resumed after step 1
    assert [p.name.split("-")[1] for p in (out / "incomplete").iterdir()] == ["2"]
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert f"hf:{tiny_llama}" in card and str(data) in card and "[None]" not in card
