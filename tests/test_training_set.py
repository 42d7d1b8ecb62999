"""The training set as others train on it: `select --format messages | prompt-completion | text`
read by TRL's SFTTrainer as written (datasets.load_dataset("json"), the student's tokenizer, the
card's one line for the chat template, nothing else) trains on exactly the tokens teachfit scored,
and its loss on them before any update is teachfit's loss_self, pair by pair; the dataset card;
--push-to-hub up to the upload call (never the network)."""
import json
import math

import pytest

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from conftest import PAIRS, write_pairs
from teachfit.config import ScoreConfig, SelectConfig
from teachfit.files import read_table
from teachfit.select import run_select
from teachfit.template import (DEFAULT_CHAT_TEMPLATE, DEFAULT_TEMPLATE_NAME, DEFAULT_TRAINING_CHAT_TEMPLATE,
                               encode_pair, training_text)

OTHER = ["The sea is blue.", "Recursion is a function that calls itself.", "It is 4.", "apple, banana and cherry"]
LOSSES = {}  # format -> (teachfit mean loss_self, TRL's), printed for the record (pytest -s)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_llama):
    """Two teachers' answers to PAIRS' instructions (a reward each), scored by tiny_llama."""
    from teachfit.score.engine import score_files

    folder = tmp_path_factory.mktemp("scored")
    write_pairs(folder / "t1.jsonl", [dict(p, teacher="t1", reward=5.0 + i) for i, p in enumerate(PAIRS)])
    write_pairs(folder / "t2.jsonl", [dict(p, teacher="t2", response=y, reward=8.0 - i)
                                      for i, (p, y) in enumerate(zip(PAIRS, OTHER))])
    score_files([folder / "t1.jsonl", folder / "t2.jsonl"], folder / "s.parquet", f"hf:{tiny_llama}",
                config=ScoreConfig(dtype="float32", reward_column="reward", progress=False))
    rows, meta = read_table(folder / "s.parquet")
    return folder, {(r["teacher"], r["id"]): r for r in rows}, meta


def _select(scored, out, fmt, **options):
    folder, _, _ = scored
    return run_select(SelectConfig(inputs=[str(folder / "s.parquet")], by="car-instance", out=str(out), format=fmt,
                                   **options), None)


def test_the_training_template_renders_the_scored_tokens(tiny_llama):
    from transformers import AutoTokenizer

    plain, training = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    plain.chat_template, training.chat_template = DEFAULT_CHAT_TEMPLATE, DEFAULT_TRAINING_CHAT_TEMPLATE
    for pair in PAIRS + [dict(PAIRS[0], response=" leading space\n\nand blank lines \n")]:
        assert encode_pair(training, pair["instruction"], pair["response"]) == \
            encode_pair(plain, pair["instruction"], pair["response"])
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    for messages in (turns[:1], turns):  # every prompt, multi-turn included, renders the same
        assert training.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
            plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert training.apply_chat_template(turns[:2], tokenize=False) == \
        plain.apply_chat_template(turns[:2], tokenize=False).rstrip()  # no blank line after the last turn


def test_text_leaves_the_bos_to_a_tokenizer_that_adds_it(tiny_llama):
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    plain = training_text(tokenizer, "Hi?", "Hello.")
    assert plain.startswith("<bos>### Instruction:\nHi?") and plain.endswith("Hello.<eos>")
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    adds = training_text(tokenizer, "Hi?", "Hello.")
    assert adds == plain[len("<bos>"):] and tokenizer(adds)["input_ids"] == encode_pair(tokenizer, "Hi?", "Hello.").input_ids


def _trainer(path, fmt, tiny_llama, output_dir):
    """TRL's SFTTrainer on the file as written, with the student's tokenizer (and, when a
    chat_template.jinja lies beside it, the card's one line); batch 1, learning rate 0."""
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = datasets.load_dataset("json", data_files=str(path), split="train")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    template = path.parent / "chat_template.jinja"
    if fmt != "text":
        tokenizer.chat_template = open(template).read()  # the card's one line
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    args = trl.SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=1, per_device_eval_batch_size=1,
                         learning_rate=0.0, max_steps=1, report_to=[], save_strategy="no", disable_tqdm=True,
                         bf16=False, use_cpu=True, assistant_only_loss=fmt == "messages")
    return trl.SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer)


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion", "text"])
def test_trl_trains_on_the_scored_tokens_with_the_scored_loss(tmp_path, scored, tiny_llama, fmt):
    """Each format as written: TRL's sequence is teachfit's, its trained tokens (labels) are the
    response tokens teachfit scored (text: TRL trains on every token; the response tokens are
    compared), and its loss on them at step 0 is each pair's loss_self (batch 1: TRL's loss is
    the mean over the batch's tokens, so one pair's mean); messages and prompt-completion also
    give eval_loss = the mean loss_self (the evaluation averages the per-pair losses)."""
    import torch
    from transformers import AutoTokenizer

    _, rows, _ = scored
    out = tmp_path / "data" / "train.jsonl"
    summary = _select(scored, out, fmt)
    assert (out.parent / "chat_template.jinja").is_file() == (fmt != "text")
    assert "chat_template.jinja" in (out.parent / "README.md").read_text() or fmt == "text"
    written = [json.loads(line) for line in out.open()]
    assert len(written) == summary["n_selected"] == len(PAIRS) and {w["teacher"] for w in written} == {"t1", "t2"}
    trainer = _trainer(out, fmt, tiny_llama, tmp_path / "trl")
    scorer = AutoTokenizer.from_pretrained(tiny_llama)
    scorer.chat_template = DEFAULT_CHAT_TEMPLATE  # what ensure_chat_template gave the scorer
    model = trainer.model.eval()
    teachfit_losses, trl_losses = [], []
    for index, record in enumerate(written):
        pair = rows[(record["teacher"], record["id"])]
        example = trainer.train_dataset[index]
        source = {"t1": PAIRS, "t2": [dict(p, response=y) for p, y in zip(PAIRS, OTHER)]}[record["teacher"]]
        original = next(p for p in source if p["id"] == record["id"])
        encoded = encode_pair(scorer, original["instruction"], original["response"])
        assert example["input_ids"] == encoded.input_ids  # TRL's tokens are the scored sequence
        batch = trainer.data_collator([{k: example[k] for k in ("input_ids", "labels") if k in example}])
        labels = batch["labels"][0]
        trained = (labels != -100).nonzero().flatten().tolist()
        if fmt == "text":
            assert trained == list(range(len(encoded.input_ids)))  # plain language modelling: every token
            labels[:encoded.response_start] = -100  # TRL's loss, on the response tokens
        else:
            assert trained == list(range(encoded.response_start, len(encoded.input_ids)))  # exactly the scored ones
        with torch.no_grad():
            loss = float(trainer.compute_loss(model, batch))
        teachfit_losses.append(pair["loss_self"])
        trl_losses.append(loss)
        assert loss == pytest.approx(pair["loss_self"], abs=1e-4), (fmt, record["id"])
    mean_teachfit, mean_trl = sum(teachfit_losses) / len(teachfit_losses), sum(trl_losses) / len(trl_losses)
    if fmt != "text":
        assert trainer.evaluate()["eval_loss"] == pytest.approx(mean_teachfit, abs=1e-4)
    LOSSES[fmt] = (mean_teachfit, mean_trl, teachfit_losses, trl_losses)
    print(f"\n{fmt}: teachfit loss_self {[round(x, 5) for x in teachfit_losses]} mean {mean_teachfit:.5f}; "
          f"TRL {[round(x, 5) for x in trl_losses]} mean {mean_trl:.5f}")
    result = trainer.train()  # and it trains on it, as written
    assert result.global_step == 1 and math.isfinite(result.training_loss)


def test_the_dataset_card_says_how_the_data_was_chosen(tmp_path, scored, tiny_llama):
    folder, rows, _ = scored
    out = tmp_path / "sel.jsonl"
    summary = _select(scored, out, "prompt-completion", beta=2.0)
    card = (tmp_path / "README.md").read_text()
    head, body = card.split("\n---\n", 1)
    assert head.startswith("---\n") and "- split: train\n    path: \"sel.jsonl\"" in head and '- "n<1K"' in head
    from teachfit.versions import versions

    for text in ("`car-instance` (beta = 2.0, reward_transform = raw)", f"`hf:{tiny_llama}`",
                 "the input files' `reward` field", f"`{DEFAULT_TEMPLATE_NAME}`", f"teachfit {versions()['teachfit']}",
                 "teachfit select", "--format prompt-completion", "--beta 2.0",
                 'tokenizer.chat_template = open("chat_template.jinja").read()', "completion_only_loss",
                 f"{len(PAIRS)} instruction-response pairs"):
        assert text in body, text
    chosen = summary["selection"]
    for teacher, share in summary["share"].items():
        assert f"| {teacher} | {share:.1%} | {len(PAIRS)} |" in body
    assert f"| **selection** | 100% | {len(PAIRS)} | {chosen['reward']:.3f} | {chosen['loss_self']:.3f} |" in body
    # a README.md that teachfit did not write is never overwritten: the card goes to <stem>.README.md
    (tmp_path / "README.md").write_text("my project\n")
    summary = _select(scored, out, "messages")
    assert (tmp_path / "README.md").read_text() == "my project\n"
    assert summary["files"]["card"] == str(tmp_path / "sel.README.md")
    # a run directory's own copy: RUN/selections/<name>.README.md, with the study file when there is one
    from teachfit.run import RunDir

    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"config": {"experiment": "/x/study.yaml"}}))
    summary = run_select(SelectConfig(inputs=[str(folder / "s.parquet")], by="grape"), run)
    card = (tmp_path / "run" / "selections" / "grape.README.md").read_text()
    assert "study file `/x/study.yaml`" in card and "`grape`" in card
    assert (tmp_path / "run" / "selections" / "grape.chat_template.jinja").read_text() == DEFAULT_TRAINING_CHAT_TEMPLATE
    assert "grape.chat_template.jinja" in card


def test_a_student_with_its_own_template_gets_no_template_file(tmp_path, tiny_chatml):
    from teachfit.score.engine import score_files

    write_pairs(tmp_path / "t.jsonl", [dict(p, reward=1.0) for p in PAIRS])
    score_files([tmp_path / "t.jsonl"], tmp_path / "s.parquet", f"hf:{tiny_chatml}",
                config=ScoreConfig(dtype="float32", reward_column="reward", progress=False))
    out = tmp_path / "o" / "sel.jsonl"
    run_select(SelectConfig(inputs=[str(tmp_path / "s.parquet")], by="reward", out=str(out), format="text"), None)
    texts = [json.loads(line)["text"] for line in out.open()]
    assert texts[0].startswith("<|im_start|>user\n") and texts[0].endswith("<|im_end|>")  # its own template
    assert not (out.parent / "chat_template.jinja").exists()
    assert "`model`" in (out.parent / "README.md").read_text()


def test_push_to_hub_uploads_the_selection_card_and_template_in_one_commit(tmp_path, scored, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []
    monkeypatch.setattr(hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw))
                        or f"https://huggingface.co/datasets/{repo_id}")
    monkeypatch.setattr(hub.HfApi, "create_commit", lambda self, repo_id, operations, **kw: calls.append(
        ("create_commit", repo_id, operations, kw)))
    out = tmp_path / "sel.jsonl"
    summary = _select(scored, out, "prompt-completion", push_to_hub="me/compatible-set")
    (_, repo, create), (_, repo2, operations, commit) = calls
    assert repo == repo2 == "me/compatible-set" and create["repo_type"] == commit["repo_type"] == "dataset"
    assert create["exist_ok"] is True
    uploaded = {op.path_in_repo: op for op in operations}
    assert sorted(uploaded) == ["README.md", "chat_template.jinja", "sel.jsonl"] == summary["pushed"]["files"]
    assert uploaded["sel.jsonl"].path_or_fileobj == str(out)
    card = uploaded["README.md"].path_or_fileobj.decode()
    assert 'path: "sel.jsonl"' in card and 'open("chat_template.jinja")' in card
    from dataclasses import fields

    assert next(f for f in fields(SelectConfig) if f.name == "push_to_hub").metadata["run_owned"]  # not in studies
