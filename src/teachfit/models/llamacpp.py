"""llama.cpp backend (CPU or GPU) for GGUF teachers, through llama-cpp-python (extra [llamacpp]).

The GGUF's own chat template is used (llama-cpp-python reads it from the file's metadata).
top_k and min_p are switched off so that temperature / top-p sampling means what it says.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

from teachfit.env import require
from teachfit.models.registry import register
from teachfit.models.spec import ModelSpec, ModelSpecError, check_gguf_magic
from teachfit.models.base import Generation, GenerationSettings, Messages


def open_gguf(opener: Any, path: Any) -> Any:
    """opener() (a llama.cpp load of `path`), with a damaged file reported as a ModelSpecError."""
    check_gguf_magic(path)
    try:
        return opener()
    except (ValueError, RuntimeError) as error:  # llama.cpp: "Failed to load model from file: ..."
        raise ModelSpecError(f"{path}: not a valid GGUF file ({str(error).splitlines()[0][:200]})") from None


def open_llama(spec: ModelSpec, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0,
               logits_all: bool = False) -> Any:
    """The one constructor of llama.cpp models (teachers and judges): the spec's GGUF file with
    `n_ctx` tokens of context on all cores (or `n_threads`), layers offloaded to a GPU when asked."""
    llama_cpp = require("llama_cpp", "llamacpp")
    path = spec.gguf_path()
    return open_gguf(lambda: llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, seed=0,
                                             n_threads=n_threads or os.cpu_count(), n_gpu_layers=n_gpu_layers,
                                             logits_all=logits_all), path)


class LlamaCppTeacher:
    """A GGUF model answering one request at a time (llama.cpp parallelises inside a request)."""

    batch_size = 1

    def __init__(self, spec: ModelSpec, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0):
        self.spec, self.path = spec, spec.gguf_path()
        self.llm = open_llama(spec, n_ctx, n_threads, n_gpu_layers)

    def describe(self) -> dict[str, Any]:
        """What a record says about the backend."""
        return {"backend": "llamacpp", "spec": str(self.spec), "file": self.path.name,
                "fingerprint": self.spec.fingerprint(), "n_ctx": self.llm.n_ctx()}

    def generate(self, conversations: Sequence[Messages], settings: GenerationSettings,
                 seeds: Sequence[int]) -> list[Generation]:
        """One response per conversation."""
        results = []
        for messages, seed in zip(conversations, seeds):
            started = time.perf_counter()
            try:
                out = self.llm.create_chat_completion(
                    messages, temperature=settings.temperature, top_p=settings.top_p, top_k=0, min_p=0.0,
                    max_tokens=settings.max_new_tokens, seed=seed)
            except (ValueError, RuntimeError) as error:  # e.g. prompt longer than the context
                results.append(Generation(error=f"{type(error).__name__}: {error}",
                                          seconds=time.perf_counter() - started))
                continue
            choice, usage = out["choices"][0], out.get("usage", {})
            results.append(Generation(text=choice["message"]["content"] or "", finish_reason=choice["finish_reason"],
                                      prompt_tokens=usage.get("prompt_tokens", 0),
                                      completion_tokens=usage.get("completion_tokens", 0),
                                      seconds=time.perf_counter() - started))
        return results


@register("teacher", "gguf")
@register("teacher", "packaged")
def load_llamacpp_teacher(spec: ModelSpec, **options: Any) -> LlamaCppTeacher:
    """Teacher loader for gguf: and packaged: specs."""
    return LlamaCppTeacher(spec, **{k: v for k, v in options.items() if k in ("n_ctx", "n_threads", "n_gpu_layers")})
