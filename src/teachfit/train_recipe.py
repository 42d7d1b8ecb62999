"""The paper's training recipe as TRL arguments: Table 5 and the authors' Axolotl config from their
model cards (flydust/gemma-2-2b-magpie-gemma2-9b and the other students of the paper): lr 2e-5,
2 epochs, cosine, warmup ratio 0.1, sample packing, 4096-token sequences, paged 8-bit AdamW,
micro-batch 1 with 8 accumulation steps on 4 GPUs (an effective batch of 32, which teachfit keeps
on any number of devices). Where the 8-bit optimizer cannot run (no CUDA, or no bitsandbytes) it
falls back to adamw_torch, and the fallback is recorded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from teachfit.config import TrainConfig
from teachfit.env import require

# optimizers of bitsandbytes (transformers' names): they need it installed and a CUDA GPU
BITSANDBYTES_PREFIXES = ("paged_", "adamw_bnb", "adamw_8bit", "lion_", "ademamix", "rmsprop_bnb")
CPU_OPTIMIZER = "adamw_torch"


def optimizer_for(requested: str, cuda: bool) -> tuple[str, str | None]:
    """The optimizer the Trainer gets and, when it is not `requested`, why: a bitsandbytes
    optimizer (the recipe's paged_adamw_8bit) needs a CUDA GPU and bitsandbytes; without either
    it falls back to adamw_torch (same update rule, 32-bit states, no paging)."""
    import importlib.util

    if not requested.startswith(BITSANDBYTES_PREFIXES):
        return requested, None
    if not cuda:
        return CPU_OPTIMIZER, f"{requested} needs a CUDA GPU (bitsandbytes): {CPU_OPTIMIZER} on this machine"
    if importlib.util.find_spec("bitsandbytes") is None:
        return CPU_OPTIMIZER, f"{requested} needs bitsandbytes (pip install bitsandbytes): {CPU_OPTIMIZER} instead"
    return requested, None


def warmup_arguments(config: TrainConfig, fields: set[str]) -> dict[str, Any]:
    """Warmup for the Trainer: config.warmup_steps when given (0: none), else config.warmup_ratio
    of the optimizer steps. transformers 5 takes a ratio as warmup_steps < 1; 4.x has warmup_ratio."""
    if config.warmup_steps is not None:
        return {"warmup_steps": config.warmup_steps}
    return {"warmup_ratio": config.warmup_ratio} if "warmup_ratio" in fields else {"warmup_steps": config.warmup_ratio}


def training_arguments(config: TrainConfig, out: Path, world_size: int = 1, cuda: bool = False, bf16: bool = False,
                       show_progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """TRL's SFTConfig for `config` (by default the paper's recipe: lr 2e-5, 2 epochs, cosine,
    warmup 0.1, micro-batch 1 x accumulation to an effective 32 (8 on 4 GPUs), 4096 tokens,
    packing, paged_adamw_8bit) and what was changed from it: {"optimizer": ..., "optimizer_fallback": reason}."""
    import dataclasses

    trl = require("trl", "train")
    optim, fallback = optimizer_for(config.optimizer, cuda)
    warmup = warmup_arguments(config, {f.name for f in dataclasses.fields(trl.SFTConfig)})
    args = trl.SFTConfig(
        output_dir=str(out), learning_rate=config.learning_rate, num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps, optim=optim, lr_scheduler_type=config.lr_scheduler_type, **warmup,
        per_device_train_batch_size=config.per_device_batch_size, per_device_eval_batch_size=1,
        gradient_accumulation_steps=config.gradient_accumulation(world_size), max_length=config.max_length,
        packing=config.packing, eval_packing=False,  # evaluation stays per pair: its loss is CAR's L
        gradient_checkpointing=config.gradient_checkpointing, bf16=bf16, seed=config.seed,
        logging_steps=config.logging_steps, save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        report_to=[], disable_tqdm=not show_progress,
    )
    return args, {"optimizer": optim, "optimizer_fallback": fallback}
