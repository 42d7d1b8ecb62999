"""transformers backend: causal LMs and reward models from hub ids, local folders and GGUF files.

A GGUF file is dequantized into a dense torch model once and saved as safetensors under
teachfit's cache, so later loads take seconds instead of a minute.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teachfit.atomic import DONE_MARKER, folder_done, folder_once
from teachfit.env import cache_root, require
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec, ModelSpecError


def position_limit(model: Any) -> int | None:
    """The most positions a model's config allows (max_position_embeddings, GPT-2's n_positions),
    or None when the config names no limit. Learned position embeddings fail past it."""
    config = getattr(model, "config", model)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass
class LoadedModel:
    """A torch model with its tokenizer and what identifies it."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    dtype: str
    device: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def max_positions(self) -> int | None:
        """The model's position limit (see `position_limit`); sequences must not be longer."""
        return position_limit(self.model)

    def clamp_length(self, max_length: int) -> int:
        """`max_length` clamped to the model's positions (GPT-2: 1024), so that long pairs are truncated, not fatal."""
        return min(max_length, self.max_positions or max_length)

    def describe(self) -> dict[str, Any]:
        """What an output file records about this model."""
        return {"spec": str(self.spec), "fingerprint": self.spec.fingerprint(), "dtype": self.dtype,
                "device": self.device, "class": type(self.model).__name__, "max_positions": self.max_positions,
                **self.info}


def pick_device(device: str = "auto") -> str:
    """'cuda' when a GPU is visible (for 'auto'), else 'cpu'; an explicit choice is kept."""
    torch = require("torch", "hf")
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    """torch dtype for 'auto' | 'float32' | 'bfloat16' | 'float16': bf16 on GPUs and on CPUs with
    native bf16 (AVX512-BF16 or AMX), fp32 elsewhere."""
    torch = require("torch", "hf")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return getattr(torch, gpu_dtype(torch.cuda.get_device_capability(index)))
    native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False
    )()
    return torch.bfloat16 if native_bf16 else torch.float32


def gpu_dtype(capability: tuple[int, int]) -> str:
    """bfloat16 on GPUs of compute capability 8.0 and up (A100, H100, RTX 30xx on), float16 below
    (T4, V100: torch.cuda.is_bf16_supported() says True there, but bf16 is emulated and slow).
    Losses are computed in float32 either way (forward.py), so fp16's range does not reach them."""
    return "bfloat16" if tuple(capability) >= (8, 0) else "float16"


def dtype_name(dtype: str, device: str = "auto") -> str:
    """The name of the dtype a model will run in ('float32', 'bfloat16', ...), known before it
    loads (what cache keys record)."""
    return str(pick_dtype(dtype, pick_device(device))).removeprefix("torch.")


def dense_copy_of_gguf(spec: ModelSpec, model_class: str = "AutoModelForCausalLM", torch_dtype: Any = None) -> Path:
    """Folder of a dense safetensors copy of a GGUF model in the dtype it is used in (made once,
    then reused): a bf16 copy takes half the disk of an fp32 one."""
    transformers = require("transformers", "hf")
    torch = require("torch", "hf")
    from safetensors.torch import save_model

    torch_dtype = torch_dtype or torch.float32
    dtype_name = str(torch_dtype).removeprefix("torch.")
    target = cache_root() / "dequantized" / f"{spec.fingerprint()}-{model_class}-{dtype_name}"
    if folder_done(target):
        return target
    gguf = spec.gguf_path()
    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        config_class = getattr(transformers, "GgufConfig", None)
        if config_class is not None:
            kwargs["quantization_config"] = config_class(dequantize=True)
        model = getattr(transformers, model_class).from_pretrained(str(gguf.parent), dtype=torch_dtype, **kwargs)
    except (ValueError, KeyError, IndexError, EOFError, OSError, struct.error) as error:  # damaged or unsupported
        message = str(error).splitlines()[0][:200] if str(error) else ""
        raise ModelSpecError(f"{gguf}: transformers cannot read this GGUF file ({type(error).__name__}: {message})") from None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with folder_once(target) as tmp:
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text(json.dumps({"source": str(spec), "gguf": str(gguf)}))
    return target


def _source(spec: ModelSpec, model_class: str, torch_dtype: Any) -> str:
    if spec.prefix in ("gguf", "packaged"):
        return str(dense_copy_of_gguf(spec, model_class, torch_dtype))
    return spec.name


def placement(device: str) -> tuple[Any, str]:
    """(device_map for from_pretrained, the device inputs go to) for a picked device. On GPUs the
    weights load straight onto them (not into CPU memory first, then copied): `cuda` (what auto
    picks) spreads a model too large for one GPU over all of them (accelerate's "auto"), `cuda:N`
    puts it on that GPU. On a CPU nothing is mapped. (A CPU cannot show the GPU cases.)"""
    if device == "cuda":
        return "auto", "cuda:0"
    if device.startswith("cuda:"):
        return {"": device}, device
    return None, device


def _load(spec: ModelSpec, model_class: str, dtype: str, device: str, trust_remote_code: bool) -> LoadedModel:
    transformers = require("transformers", "hf")
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    device_map, device = placement(device)
    source = _source(spec, model_class, torch_dtype)
    folder = Path(source).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelSpecError(f"{spec}: {folder} has no config.json, so it is not a transformers model folder")
    # safetensors only: never unpickle weights from a path we did not write.
    common = {"trust_remote_code": trust_remote_code}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
        model = getattr(transformers, model_class).from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, **common, **({"device_map": device_map} if device_map else {})
        )
    except ValueError as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise ModelSpecError(f"{spec}: this model needs its own code from the hub (auto_map in its config), "
                                 "which teachfit does not run unless you pass --trust-remote-code") from None
        raise
    (model if device_map else model.to(device)).eval()
    dtype_name = str(torch_dtype).removeprefix("torch.")
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, dtype=dtype_name, device=device)


@register("causal_lm", "hf")
@register("causal_lm", "gguf")
@register("causal_lm", "packaged")
def load_causal_lm(spec: ModelSpec, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """A causal LM and its tokenizer, on `device`, in `dtype`, in eval mode."""
    return _load(spec, "AutoModelForCausalLM", dtype, device, trust_remote_code)


@register("sequence_classifier", "hf")
def load_sequence_classifier(
    spec: ModelSpec, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> LoadedModel:
    """A sequence-classification reward model (Skywork / ArmoRM style) and its tokenizer."""
    return _load(spec, "AutoModelForSequenceClassification", dtype, device, trust_remote_code)


def seeded_sampler(temperature: float, top_p: float, seeds: Any, device: Any) -> Any:
    """Logits processors that make greedy decoding draw a sample, each row from its own seed.

    Temperature and top-p shape the logits as `do_sample` would; then each row draws its token by
    inverting the cumulative distribution with one uniform number from a generator seeded with
    that row's seed (advanced once per step), and every other token is masked, so greedy decoding
    picks the drawn one. Row i's t-th draw depends only on (seed_i, t), never on the other rows
    of the batch (torch's shared generator would make every answer depend on its batch). Cost:
    one softmax and one cumulative sum over the vocabulary per step, and one number per row."""
    torch = require("torch", "hf")
    transformers = require("transformers", "hf")

    class InverseCdfDraw(transformers.LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            cdf = torch.softmax(scores.float(), -1).cumsum(-1)  # (batch, vocab); masked tokens add 0
            uniform = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(scores.device)
            drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1), right=True)
            drawn = drawn.clamp(max=scores.shape[-1] - 1)  # (batch, 1): the first token whose cdf exceeds u
            return torch.full_like(scores, float("-inf")).scatter_(1, drawn, 0.0)

    return transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(temperature),
                                             transformers.TopPLogitsWarper(top_p), InverseCdfDraw()])


class HFTeacher:
    """A transformers causal LM generating with its own chat template, batched (left padding).

    Sampling is seeded per row: each conversation's own seed (from the seed, the instruction and
    the sample index) drives its draws, so a sampled answer does not depend on the batch it was in,
    on the executor or on the number of workers (see `seeded_sampler`).
    """

    def __init__(self, loaded: LoadedModel, batch_size: int):
        self.loaded, self.batch_size = loaded, batch_size
        from teachfit.template import ensure_chat_template

        self.template_name = ensure_chat_template(loaded.tokenizer)

    def describe(self) -> dict[str, Any]:
        """What a record says about the backend: the model, the template, and the model's own
        sampling settings applied on top of the dataset's (model_sampling, as on vllm:)."""
        from teachfit.models.base import model_sampling_defaults

        return {"backend": "hf", **self.loaded.describe(), "template": self.template_name,
                "model_sampling": model_sampling_defaults(getattr(self.loaded.model, "generation_config", None))}

    def generate(self, conversations: Any, settings: Any, seeds: Any) -> list[Any]:
        """One response per conversation."""
        import time

        torch = require("torch", "hf")
        transformers = require("transformers", "hf")
        from teachfit.models.base import Generation, model_sampling_defaults

        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        # the model's generation_config settings, the same ones VLLMTeacher applies and describe() records:
        # repetition_penalty explicitly (1.0: none), top_k / min_p beside seeded_sampler's warpers
        chosen = model_sampling_defaults(getattr(model, "generation_config", None))
        prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True).to(self.loaded.device)
        # greedy, or the exact draw of seeded_sampler's Gumbel-max
        sampling: dict[str, Any] = {"do_sample": False, "repetition_penalty": chosen.get("repetition_penalty", 1.0)}
        if settings.temperature > 0:
            processors = seeded_sampler(settings.temperature, settings.top_p, seeds, self.loaded.device)
            if "top_k" in chosen:  # after the temperature, as transformers orders its warpers
                processors.insert(1, transformers.TopKLogitsWarper(chosen["top_k"]))
            if "min_p" in chosen:  # before the draw
                processors.insert(len(processors) - 1, transformers.MinPLogitsWarper(chosen["min_p"]))
            sampling["logits_processor"] = processors
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**batch, max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                    **sampling)
        seconds = (time.perf_counter() - started) / len(prompts)
        results = []
        width = batch["input_ids"].shape[1]
        configured = model.generation_config.eos_token_id
        configured = configured if isinstance(configured, list) else [configured]
        stops = {tokenizer.eos_token_id, *configured} - {None}
        for row in range(len(prompts)):
            new = output[row, width:].tolist()
            stop_at = next((i for i, t in enumerate(new) if t in stops), None)
            tokens = new if stop_at is None else new[:stop_at]
            results.append(Generation(
                text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                finish_reason="length" if stop_at is None else "stop",
                prompt_tokens=int(batch["attention_mask"][row].sum()), completion_tokens=len(tokens), seconds=seconds))
        return results


@register("teacher", "hf")
def load_hf_teacher(spec: ModelSpec, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                    batch_size: int = 32, **_: Any) -> HFTeacher:
    """Teacher loader for hf: specs."""
    return HFTeacher(load_causal_lm(spec, dtype, device, trust_remote_code), batch_size)
