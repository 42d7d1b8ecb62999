"""Stage `train`: SFT of a student on one teacher's dataset, TRL's SFTTrainer used as a library.

Defaults are the paper's recipe (train_recipe: Table 5 and the authors' Axolotl config). Every
pair is tokenized by teachfit itself with template.encode_pair, and the labels are -100 everywhere
but on the response tokens of DESIGN section 2, so the loss training minimises is exactly the
student loss that CAR uses (packed pairs do not attend to each other).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from teachfit.atomic import write_json_atomic, write_text_atomic
from teachfit.config import TrainConfig
from teachfit.env import require
from teachfit.run import RunDir
from teachfit.stage import Stage
from teachfit.train_recipe import training_arguments


def tokenize_for_training(pairs: Sequence[Any], tokenizer: Any, max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """input_ids and labels (-100 off the response tokens of DESIGN section 2) for each pair;
    pairs whose prompt alone exceeds max_length are dropped and counted."""
    from teachfit.template import encode_pair

    rows, counts = [], {"pairs": 0, "truncated": 0, "dropped_prompt_too_long": 0}
    for pair in pairs:
        try:
            encoded = encode_pair(tokenizer, pair.instruction, pair.response, max_length)
        except ValueError:
            counts["dropped_prompt_too_long"] += 1
            continue
        labels = [-100] * encoded.response_start + encoded.input_ids[encoded.response_start:]
        rows.append({"input_ids": encoded.input_ids, "labels": labels})
        counts["pairs"] += 1
        counts["truncated"] += encoded.truncated
    return rows, counts


def _log_callback(path: Path) -> Any:
    transformers = require("transformers", "train")

    class CsvLog(transformers.TrainerCallback):
        """Appends each logged step (loss, learning rate, tokens/s) to a CSV file."""

        def __init__(self) -> None:
            self.started = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return
            new = not path.exists()
            with path.open("a", newline="") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(["step", "epoch", "loss", "learning_rate", "num_tokens", "seconds"])
                writer.writerow([state.global_step, logs.get("epoch"), logs["loss"], logs.get("learning_rate"),
                                 logs.get("num_tokens"), round(time.perf_counter() - self.started, 2)])

    return CsvLog()


def resume_point(out: Path) -> str | None:
    """The newest complete `checkpoint-N` under `out`, to resume from. The Trainer writes a
    checkpoint's trainer_state.json last (after weights, optimizer, scheduler and RNG states), so
    one without a whole trainer_state.json was cut off by a kill during its save: it is moved
    aside to out/incomplete/ (said on stderr), never resumed from, and never blocks a later run."""
    def step(path: Path) -> int:
        suffix = path.name.rsplit("-", 1)[-1]
        return int(suffix) if suffix.isdigit() else -1

    for checkpoint in sorted(out.glob("checkpoint-*"), key=step, reverse=True):
        if step(checkpoint) >= 0 and _complete(checkpoint):
            return str(checkpoint)
        aside = out / "incomplete" / f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.parent.mkdir(exist_ok=True)
        checkpoint.rename(aside)
        print(f"teachfit train: {checkpoint} is incomplete (a kill during its save?): moved to {aside}", file=sys.stderr)
    return None


def _newest_complete(out: Path) -> str | None:
    """What resume_point finds, without moving anything (for ranks other than 0)."""
    complete = [p for p in out.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit() and _complete(p)]
    return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[-1]))) if complete else None


def training_placement(environ: dict[str, str], torch: Any) -> tuple[str, str]:
    """(device, dtype) the student trains in. Under torchrun or accelerate (LOCAL_RANK set) each
    process loads onto its own GPU, not all onto cuda:0; on GPUs of compute capability 8.0 and up
    the weights load in bf16 (the mixed-precision setting follows), fp32 elsewhere. A CPU cannot
    show the GPU cases: the decision is tested with a stand-in for torch.cuda."""
    from teachfit.models.hf import gpu_dtype

    if not torch.cuda.is_available():
        return "cpu", "float32"
    device = f"cuda:{int(environ.get('LOCAL_RANK', 0))}"
    capability = torch.cuda.get_device_capability(int(environ.get("LOCAL_RANK", 0)))
    return device, "bfloat16" if gpu_dtype(capability) == "bfloat16" else "float32"


def _complete(checkpoint: Path) -> bool:
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def model_card(summary: dict[str, Any]) -> str:
    """A README.md for the checkpoint: its base model and the data it was trained on, with the
    settings and counts (Hugging Face model-card metadata up front)."""
    student = str(summary["student"])
    prefix, _, name = student.partition(":")
    hub_id = name if prefix == "hf" and name.count("/") == 1 and not Path(name).exists() else None
    front = ["---", "library_name: transformers", "tags: [teachfit, sft]"] + ([f"base_model: {hub_id}"] if hub_id else [])
    config, counts = summary["config"], summary["counts"]
    optimizer = counts.get("optimizer", config["optimizer"])
    if counts.get("optimizer_fallback"):
        optimizer += f" ({counts['optimizer_fallback']})"
    lines = front + ["---", "", f"# {summary.get('teacher') or 'teachfit'} student", "",
                     f"Fine-tuned from `{student}` with teachfit {summary['versions'].get('teachfit', '')} "
                     f"(supervised fine-tuning, loss on the response tokens only).", "",
                     f"- data: {', '.join(f'`{d}`' for d in summary['data'])} ({summary['counts']['pairs']} pairs)",
                     f"- steps: {summary['global_step']}, final train loss {summary['train_loss']:.4f}",
                     f"- learning rate {config['learning_rate']}, epochs {config['num_train_epochs']}, "
                     f"effective batch {config['effective_batch_size']}, max length {config['max_length']}, "
                     f"LoRA: {config['lora']}", f"- optimizer {optimizer}, packing: {config.get('packing', False)}", ""]
    return "\n".join(lines)


def build_trainer(pairs: Sequence[Any], loaded: Any, out: Path, config: TrainConfig, show_progress: bool = True,
                  eval_pairs: Sequence[Any] = ()) -> tuple[Any, dict[str, Any]]:
    """An SFTTrainer over teachfit-tokenized pairs (labels only on response tokens), and the
    tokenization counts (with the optimizer used, and why when it is not the one asked for)."""
    torch = require("torch", "train")
    trl = require("trl", "train")
    datasets = require("datasets", "train")
    from teachfit.template import ensure_chat_template

    tokenizer = loaded.tokenizer
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows, counts = tokenize_for_training(pairs, tokenizer, config.max_length)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if config.bf16 == "auto":  # bf16 where the GPU has it natively (compute capability 8.0+), not where emulated
        from teachfit.models.hf import gpu_dtype

        bf16 = cuda and gpu_dtype(torch.cuda.get_device_capability()) == "bfloat16"
    else:
        bf16 = str(config.bf16).lower() == "true"
    args, chosen = training_arguments(config, out, world_size, cuda, bf16, show_progress)
    if chosen["optimizer_fallback"]:
        print(f"teachfit train: {chosen['optimizer_fallback']}", file=sys.stderr)
    peft_config = None
    if config.lora:
        peft = require("peft", "train")
        peft_config = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                      target_modules="all-linear", task_type="CAUSAL_LM")
    eval_rows = tokenize_for_training(eval_pairs, tokenizer, config.max_length)[0] if eval_pairs else None
    trainer = trl.SFTTrainer(model=loaded.model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[_log_callback(out / "train_log.csv")])
    # without progress bars the Trainer prints each log as a raw dict; train_log.csv keeps them instead
    trainer.remove_callback(require("transformers", "train").PrinterCallback)
    counts.update(world_size=world_size, bf16=bf16, gradient_accumulation_steps=args.gradient_accumulation_steps,
                  packing=config.packing, train_sequences=len(trainer.train_dataset), **chosen)
    return trainer, counts


def train_student(data: Sequence[str | Path], student: str, out: str | Path, config: TrainConfig | None = None,
                  teacher: str | Sequence[str] | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune `student` on the pairs of `data` (files or run dirs; `teacher` keeps only those
    datasets) and save the model with its chat template to `out`. Resumes from out/checkpoint-*."""
    from teachfit.models import load
    from teachfit.files import expand_inputs, read_pairs
    from teachfit.versions import versions

    config = config or TrainConfig()
    out = Path(out)
    keep = {teacher} if isinstance(teacher, str) else set(teacher or ())
    pairs = [p for p in read_pairs(expand_inputs(data)) if not keep or p.teacher in keep]
    if not pairs:
        raise ValueError(f"no pairs to train on in {', '.join(map(str, data))}" + (f" for teacher '{', '.join(sorted(keep))}'" if keep else ""))
    out.mkdir(parents=True, exist_ok=True)  # after the data is read: a bad path leaves no empty checkpoint folder
    device, dtype = training_placement(dict(os.environ), require("torch", "train"))
    loaded = load("causal_lm", student, dtype=dtype, device=device)
    trainer, counts = build_trainer(pairs, loaded, out, config, show_progress)
    main_process = trainer.is_world_process_zero()  # under torchrun/accelerate, rank 0 alone writes files
    if main_process:
        write_json_atomic(out / "teachfit_train_config.json", asdict(config))
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_point(out) if main_process else _newest_complete(out))
    seconds = time.perf_counter() - started
    model = trainer.model.merge_and_unload() if config.lora else trainer.model
    if not main_process:
        return {"global_step": result.global_step, "train_loss": result.training_loss, "counts": counts, "rank": "worker"}
    model.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)  # carries the chat template used in training
    label = ",".join(sorted(keep)) if keep else Path(data[0]).stem if len(data) == 1 and Path(data[0]).is_file() else None
    summary = {"student": student, "teacher": label, "data": [str(d) for d in data], "config": asdict(config),
               "counts": counts, "train_loss": result.training_loss, "global_step": result.global_step,
               "seconds": round(seconds, 1), "versions": versions()}
    write_text_atomic(out / "README.md", model_card(summary))  # replaces TRL's card ("fine-tuned version of [None]")
    if not config.keep_checkpoints:  # the resume copies (weights + optimizer: 3.1 GB each for a 270M student)
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    write_json_atomic(out / RunDir.CHECKPOINT_METADATA, summary)  # last: its presence says the checkpoint is finished
    return summary


# ---- the stage ---------------------------------------------------------------------------------
def run_train(config: TrainConfig, run: Any = None, executor: Any = None) -> dict[str, Any]:
    """SFT of config.student on config.data (filtered to config.teacher datasets) into config.out."""
    if not config.data:
        raise ValueError("give a run directory or response files")
    if not config.student or not config.out:
        raise ValueError("give --student and --out")
    return train_student(config.data, config.student, config.out, config, config.teacher or None,
                         show_progress=config.progress)


def checkpoints(plan: Any) -> list[tuple[str, str]]:
    """(student spec, dataset) of every checkpoint a study trains: each student on every teacher's
    dataset and every selection, or on those train.teacher names."""
    wanted = plan.sections["train"].teacher
    datasets = [name for name in plan.of("dataset") if not wanted or name in wanted]
    return [(student, dataset) for student in plan.sections["score"].student for dataset in datasets]


def _plan(config: TrainConfig, plan: Any) -> None:
    if "score" not in plan.sections:
        plan.fail(("train",), "'train' needs a 'score' section (its students are the ones trained)")
    for index, name in enumerate(config.teacher):
        if name not in plan.of("dataset"):
            plan.fail(("train", "teacher", index), f"'{name}' is not a dataset of this study "
                                                   f"(datasets: {', '.join(plan.of('dataset')) or 'none'})")


def _units(config: TrainConfig, plan: Any, run: Any) -> list[Any]:
    from dataclasses import replace

    from teachfit.stage import Unit
    from teachfit.teachers import student_name

    units = []
    for student, dataset in checkpoints(plan):
        source = run.selection(dataset) if dataset in plan.of("selection") else run.responses(dataset)
        out = run.checkpoint(student_name(student), dataset)
        job = replace(config, data=[str(source)], student=student, out=str(out), teacher=[])
        units.append(Unit(f"train-{out.name}", job, inputs=[source], outputs=[out],
                          work=f"1 checkpoint ({student} on {dataset})"))
    return units


STAGE = Stage(
    name="train", config=TrainConfig, run=run_train, plan=_plan, units=_units, needs=("generate", "select"),
    help="Fine-tune (SFT) a student on a teacher's dataset with the paper's recipe; resumes when re-run. "
         "Multi-GPU: `accelerate launch -m teachfit.cli train ...` or `torchrun --nproc-per-node N -m teachfit.cli "
         "train ...` (the gradient accumulation is recomputed so the effective batch stays the same).",
    summary=lambda stats: {k: stats[k] for k in ("global_step", "train_loss", "counts")},
    line=lambda stats: (f"trained {stats['global_step']} steps on {stats['counts']['pairs']} pairs in "
                        f"{stats['seconds']}s, train loss {stats['train_loss']:.4f}"),
)
