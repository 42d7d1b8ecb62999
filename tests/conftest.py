"""Tiny models built on the spot (random weights, a tokenizer trained here): no network, ever."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

CORPUS = [
    "Write a short poem about the sea.", "The sea is wide and blue, and the waves come and go.",
    "Explain recursion to a child.", "Recursion is when a function calls itself on a smaller problem.",
    "What is 2 + 2?", "2 + 2 = 4. ### Instruction: ### Response: 0123456789",
    "List three fruits: apple, banana, cherry.", "Give me advice on learning to code every day.",
]


def build_tokenizer(chat_template: str | None = None, bos: bool = True):
    """A byte-level BPE tokenizer trained on CORPUS, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"] + (["<|im_start|>", "<|im_end|>"] if chat_template else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>" if bos else None)
    if chat_template:
        fast.chat_template = chat_template
    return fast


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_model(folder, arch: str = "llama", chat_template: str | None = None, seed: int = 0, bos: bool = True):
    """Save a tiny random causal LM (llama or gpt2) with its tokenizer to `folder`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(chat_template, bos=bos)
    vocab = len(tokenizer)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=512, n_embd=32, n_layer=2, n_head=4,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny llama without a chat template (gets teachfit's default)."""
    return build_model(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=1)


@pytest.fixture(scope="session")
def tiny_chatml(tmp_path_factory):
    """A tiny llama with a ChatML chat template."""
    return build_model(tmp_path_factory.mktemp("tiny_chatml"), "llama", chat_template=CHATML, seed=2)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A tiny GPT-2 (BOS = EOS, no chat template), as a reference model."""
    return build_model(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2", seed=3, bos=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHFIT_CACHE", str(tmp_path / "teachfit-cache"))


def write_pairs(path, rows):
    """Write JSONL test pairs."""
    import json

    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def score_fails_in_one_line(tmp_path, student: str, monkeypatch, capsys) -> str:
    """Run `teachfit score` on one pair with `student` through the CLI; assert it ends in exit 2
    with one error line and no traceback (the loading note aside) and wrote no scores; return stderr."""
    import sys

    import pytest

    from teachfit import cli

    pairs = write_pairs(tmp_path / "pairs.jsonl", [PAIRS[0] | {"teacher": "t"}])
    monkeypatch.setattr(sys, "argv", ["teachfit", "score", str(pairs), "--student", student, "--metrics", "ppl_self",
                                      "--out", str(tmp_path / "s.parquet"), "--no-progress"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("loading ")]  # the progress note aside
    assert exited.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert not (tmp_path / "s.parquet").exists()
    return err


PAIRS = [
    {"id": "a", "instruction": "Write a short poem about the sea.", "response": "The sea is wide and blue."},
    {"id": "b", "instruction": "Explain recursion to a child.", "response": "A function calls itself on a smaller problem."},
    {"id": "c", "instruction": "What is 2 + 2?", "response": "2 + 2 = 4."},
    {"id": "d", "instruction": "List three fruits.", "response": "apple, banana, cherry"},
]


def synthetic(beta_true=2.0, students=("s1", "s2"), n=12, seed=0):
    """Per-teacher metric rows and measured AP rows whose truth is CAR at `beta_true`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    metric_rows, truth_rows = [], []
    for student in students:
        for i in range(n):
            reward, loss = rng.uniform(4, 9), rng.uniform(0.3, 2.5)
            metric_rows.append({"student": student, "teacher": f"t{i}", "reward_used": reward, "reward": reward, "L": loss,
                                "car": reward / (1 + 3 * loss), "ppl_self": float(np.exp(loss)),
                                "length": rng.uniform(100, 900), "size_b": float(i + 1)})
            truth_rows.append({"student": student, "teacher": f"t{i}", "ap": reward / (1 + beta_true * loss)})
    return metric_rows, truth_rows


def installed(name: str = "smollm2-135m-instruct") -> bool:
    """Whether a packaged model's files are installed."""
    from teachfit.models.packaged import PACKAGED, PackagedModelError, chunk_paths

    try:
        chunk_paths(PACKAGED[name])
        return True
    except PackagedModelError:
        return False


# --- what a test needs from outside the checkout: one rule each for skipping or failing ---

REQUIRE_PACKAGED = "TEACHFIT_REQUIRE_PACKAGED"  # `make test` (hence CI) sets it: a missing model fails
SMOLLM = "smollm2-135m-instruct"
SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the clone (CI has it)


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def require_packaged(*modules: str, model: str = SMOLLM) -> None:
    """Skip the calling test when the packaged `model` or a module it runs on (e.g.
    "llama_cpp.server.app") is missing; fail instead when TEACHFIT_REQUIRE_PACKAGED is set, as
    `make test` sets it (the set-up installs both, so a missing one is a broken set-up, not a
    skip). Tests declare the need with `@pytest.mark.packaged(*modules, model=...)`."""
    missing = [f"module {m}" for m in modules if not _importable(m)]
    if not installed(model):
        from teachfit.models.packaged import PACKAGED

        missing.append(f"packaged model {model} ({PACKAGED[model].install_hint()})")
    if not missing:
        return
    message = f"needs {', '.join(missing)}"
    if os.environ.get(REQUIRE_PACKAGED, "") not in ("", "0"):
        pytest.fail(f"{message}; {REQUIRE_PACKAGED} is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(f"{message} (make test installs it)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """`@pytest.mark.packaged(...)`: checked before any fixture starts a server with the model."""
    for mark in item.iter_markers("packaged"):
        require_packaged(*mark.args, **mark.kwargs)


def shared_path(relative: str) -> Path:
    """A file under ../shared (the paper's text, the official IFEval prompts): skipped where the
    checkout has no ../shared beside it, a failure when CI=true (CI has it)."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is not beside this checkout"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true, so this fails instead of skipping", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """llama_cpp.server with the packaged SmolLM2 on a loopback port, startable and stoppable."""

    def __init__(self, *args: str):
        self.port, self.process, self.args = free_port(), None, list(args)  # args: more server flags
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        import subprocess
        import sys
        import time
        import urllib.request

        from teachfit.models.packaged import resolve_packaged

        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_packaged("smollm2-135m-instruct")),
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "1024", "--verbose", "false", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("llama.cpp server did not start")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def write_study(folder, student: str, teacher: str, executor: str = "local", n: int = 8, max_new_tokens: int = 6,
                window: int = 3, judge: bool = False, sampled: bool = False):
    """An experiment file (generate with one tiny teacher named `t`, and with `sampled` the same
    teacher at temperature 1 named `s`; then score) and its n instructions."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_pairs(folder / "instructions.jsonl", [{"id": f"i{k}", "instruction": f"Question {k}: what is {k} + {k}?"}
                                                for k in range(n)])
    reward = f"  reward_model: hf:{teacher}\n  reward_kind: judge\n" if judge else ""
    path = folder / "study.yaml"
    path.write_text(f"""executor: {executor}
generate:
  instructions: [instructions.jsonl]
  teacher: ["hf:{teacher}?name=t"{f', "hf:{teacher}?name=s&temperature=1.0"' if sampled else ""}]
  max_new_tokens: {max_new_tokens}
  dtype: float32
  progress: false
score:
  student: hf:{student}
{reward}  dtype: float32
  progress: false
  window: {window}
""")
    return path
