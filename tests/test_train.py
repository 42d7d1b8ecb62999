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
    if not torch.cuda.is_available():  # the recipe's optimizer, and the one used instead, on record
        assert "- optimizer adamw_torch (paged_adamw_8bit needs a CUDA GPU" in card and "packing: True" in card


# The authors' Axolotl config, as their model cards give it (flydust/gemma-2-2b-magpie-gemma2-9b, Gemma-2-2B
# on Magpie-100K answered by Gemma-2-9B, 4 A100s): written out here, not read from teachfit.
AUTHORS = {"warmup_ratio": 0.1, "sample_packing": True, "sequence_len": 4096, "optimizer": "paged_adamw_8bit",
           "micro_batch_size": 1, "gradient_accumulation_steps": 8, "num_devices": 4, "learning_rate": 2e-5,
           "num_epochs": 2, "lr_scheduler": "cosine"}


def test_the_paper_recipe_is_the_authors_config_with_a_cpu_fallback(tmp_path):
    """TRL's SFTConfig built from the default TrainConfig carries the authors' values (on their 4
    GPUs: accumulation 8; on one device the accumulation keeps the effective batch of 32); the 8-bit
    paged optimizer falls back to adamw_torch without CUDA, and says why."""
    from teachfit.train_recipe import optimizer_for, training_arguments

    config = TrainConfig()
    assert config.optimizer == AUTHORS["optimizer"]
    args, chosen = training_arguments(config, tmp_path, world_size=AUTHORS["num_devices"], cuda=False)
    assert args.packing is AUTHORS["sample_packing"] and args.eval_packing is False
    assert args.max_length == AUTHORS["sequence_len"] and args.per_device_train_batch_size == AUTHORS["micro_batch_size"]
    assert args.gradient_accumulation_steps == AUTHORS["gradient_accumulation_steps"]
    assert args.get_warmup_steps(1000) == round(AUTHORS["warmup_ratio"] * 1000)
    assert args.learning_rate == AUTHORS["learning_rate"] and args.num_train_epochs == AUTHORS["num_epochs"]
    assert str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) == AUTHORS["lr_scheduler"]
    assert str(getattr(args.optim, "value", args.optim)) == "adamw_torch"
    assert chosen["optimizer"] == "adamw_torch" and "paged_adamw_8bit needs a CUDA GPU" in chosen["optimizer_fallback"]
    one_device, _ = training_arguments(config, tmp_path, world_size=1)
    assert one_device.gradient_accumulation_steps == 32  # 1 x 32 x 1 = 1 x 8 x 4
    steps, _ = training_arguments(TrainConfig(warmup_steps=7), tmp_path)
    assert steps.get_warmup_steps(1000) == 7
    none, _ = training_arguments(TrainConfig(warmup_steps=0), tmp_path)  # 0 is no warmup, not the default ratio
    assert none.get_warmup_steps(1000) == 0
    assert optimizer_for("adamw_torch", cuda=False) == ("adamw_torch", None)
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:  # a GPU without bitsandbytes falls back too, and says so
        assert "needs bitsandbytes" in optimizer_for("paged_adamw_8bit", cuda=True)[1]
    else:
        assert optimizer_for("paged_adamw_8bit", cuda=True) == ("paged_adamw_8bit", None)


def test_packed_pairs_do_not_see_each_other(tmp_path, tiny_llama):
    """A packed training sequence's loss equals the token-weighted mean of each pair's loss computed
    alone (attention stays within each pair); the same tokens packed without position_ids, where
    every pair attends to the ones before it, give another loss."""
    pairs = list(read_pairs([write_pairs(tmp_path / "t.jsonl", PAIRS)]))
    loaded = load("causal_lm", f"hf:{tiny_llama}", dtype="float32")
    trainer, counts = build_trainer(pairs, loaded, tmp_path / "out", TrainConfig(**FAST), False)
    assert counts["packing"] and counts["train_sequences"] < counts["pairs"]
    batch = next(iter(trainer.get_train_dataloader()))
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    segments = [tuple(batch["input_ids"][0, a:b].tolist()) for a, b in zip(starts, starts[1:])]
    assert len(segments) >= 2
    rows = {tuple(r["input_ids"]): r for r in tokenize_for_training(pairs, loaded.tokenizer, 256)[0]}
    model = loaded.model.eval()
    total = count = 0.0
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids")})
        leaky = model(input_ids=batch["input_ids"]).logits  # plain causal attention over the whole packed row
        apart, across = [], []
        for (a, b), segment in zip(zip(starts, starts[1:]), segments):
            row = rows[segment]
            n = sum(label != -100 for label in row["labels"][1:])  # the shifted targets the loss averages over
            alone = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            total, count = total + alone.loss.item() * n, count + n
            apart.append((packed.logits[0, a:b] - alone.logits[0]).abs().max().item())
            across.append((leaky[0, a:b] - alone.logits[0]).abs().max().item())
    assert packed.loss.item() == pytest.approx(total / count, abs=1e-5)
    assert max(apart) < 1e-5, apart  # each pair computed as if alone
    assert min(across[1:]) > 1e-3, across  # leaky: every pair after the first sees its neighbours
