"""`teachfit export-model`: a model as a plain transformers folder that TRL can train as is."""
from __future__ import annotations

import json
import sys

import pytest

from teachfit.export import export_model
from teachfit.models import ModelSpecError
from teachfit.template import DEFAULT_CHAT_TEMPLATE, DEFAULT_TEMPLATE_NAME, encode_pair, ensure_chat_template

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]


def cli(monkeypatch, capsys, *args):
    """Run `teachfit ARGS` in this process: (exit code, stdout, stderr)."""
    from teachfit.cli import main

    monkeypatch.setattr(sys, "argv", ["teachfit", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_model_without_template_gets_teachfits_and_the_same_logits(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    result = export_model(f"hf:{tiny_llama}", out)
    assert result["template"] == DEFAULT_TEMPLATE_NAME and result["weights"] == ["model.safetensors"]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".gguf"))]
    assert leftovers(out) == []

    exported = AutoTokenizer.from_pretrained(out)
    assert exported.chat_template == DEFAULT_CHAT_TEMPLATE
    source = AutoTokenizer.from_pretrained(tiny_llama)
    assert not source.chat_template and ensure_chat_template(source) == DEFAULT_TEMPLATE_NAME
    # what teachfit scored with, character for character and token for token
    for add in (False, True):
        messages = MESSAGES[:1] if add else MESSAGES
        assert exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=add) == \
            source.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
    assert exported.apply_chat_template(MESSAGES, tokenize=False).startswith("<bos>### Instruction:\nWhat is 2 + 2?")
    assert encode_pair(exported, "What is 2 + 2?", "2 + 2 = 4.") == encode_pair(source, "What is 2 + 2?", "2 + 2 = 4.")

    ids = torch.tensor([encode_pair(source, "Explain recursion.", "A function calls itself.").input_ids])
    with torch.no_grad():
        before = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)(ids).logits
        after = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert after.dtype == torch.float32 and torch.equal(before, after)

    readme = (out / "README.md").read_text()
    from teachfit.models.spec import ModelSpec

    assert f"hf:{tiny_llama}" in readme and ModelSpec.parse(f"hf:{tiny_llama}").fingerprint() in readme
    assert DEFAULT_TEMPLATE_NAME in readme and DEFAULT_CHAT_TEMPLATE in readme


def test_a_model_with_its_own_template_keeps_it_in_bfloat16(tiny_chatml, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "chatml"
    assert export_model(tiny_chatml, out, dtype="bfloat16")["template"] == "model"
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(tiny_chatml).chat_template
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert "the model's own chat template" in (out / "README.md").read_text()


def test_an_occupied_folder_is_refused_unless_forced_and_errors_are_one_line(tiny_llama, tmp_path, monkeypatch,
                                                                              capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, _, err = cli(monkeypatch, capsys, "export-model", f"hf:{tiny_llama}", out)
    assert code == 2 and err.strip().count("\n") == 0 and "not empty" in err and "--force" in err
    assert (out / "mine.txt").read_text() == "keep me"
    code, _, err = cli(monkeypatch, capsys, "export-model", f"hf:{tiny_llama}", out, "--dtype", "float16")
    assert code == 2 and "float32 | bfloat16" in err
    code, _, err = cli(monkeypatch, capsys, "export-model", "openai:m@http://127.0.0.1:9/v1", tmp_path / "x")
    assert code == 2 and "hf:, gguf: or packaged:" in err and not (tmp_path / "x").exists()
    code, _, err = cli(monkeypatch, capsys, "export-model", tmp_path / "no-such-folder", tmp_path / "y")
    assert code == 2 and err.strip().count("\n") == 0 and not (tmp_path / "y").exists()

    code, printed, _ = cli(monkeypatch, capsys, "export-model", f"hf:{tiny_llama}", out, "--force")
    assert code == 0 and "model.safetensors" in printed and DEFAULT_TEMPLATE_NAME in printed
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert leftovers(out) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    export_model(f"hf:{tiny_llama}", empty)  # an empty folder is not "occupied"
    with pytest.raises(ModelSpecError, match="not empty"):
        export_model(f"hf:{tiny_llama}", empty)


def test_a_killed_export_leaves_no_half_folder(tiny_llama, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", killed)
    out = tmp_path / "half"
    with pytest.raises(KeyboardInterrupt):
        export_model(f"hf:{tiny_llama}", out)
    assert not out.exists() and leftovers(out) == []


@pytest.mark.packaged(model="smollm2-135m-instruct")
def test_the_packaged_gguf_student_loads_without_gguf_and_trl_accepts_it(tmp_path):
    """The packaged GGUF exported, loaded by plain from_pretrained (no gguf_file=), with the logits
    teachfit scores with; TRL's SFTTrainer, which refuses the GGUF-loaded model as "purely
    quantized", takes it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teachfit.models.hf import load_causal_lm
    from teachfit.models.spec import ModelSpec

    out = tmp_path / "smollm2"
    result = export_model("packaged:smollm2-135m-instruct", out, dtype="bfloat16")
    assert result["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and not list(out.glob("*.gguf"))
    assert result["sha256"] in (out / "README.md").read_text()

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    teachfit = load_causal_lm(ModelSpec.parse("packaged:smollm2-135m-instruct"), dtype="bfloat16", device="cpu")
    assert ensure_chat_template(teachfit.tokenizer) == "model"
    pair = encode_pair(tokenizer, "What is 2 + 2?", "2 + 2 = 4.")
    assert pair == encode_pair(teachfit.tokenizer, "What is 2 + 2?", "2 + 2 = 4.")
    with torch.no_grad():
        ids = torch.tensor([pair.input_ids])
        assert torch.equal(model(ids).logits, teachfit.model(ids).logits)
    del teachfit

    trl = pytest.importorskip("trl")
    from datasets import Dataset

    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=1,
                         report_to=[], use_cpu=True, bf16=False, fp16=False, save_strategy="no", max_length=64)
    data = Dataset.from_list([{"messages": MESSAGES}] * 2)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    assert trainer.model is model
    assert len(trainer.train_dataset) == 2
