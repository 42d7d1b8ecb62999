"""`teachfit export-model`: a model as a plain transformers folder that other trainers load as is.

TRL and Axolotl refuse a GGUF model (transformers marks one loaded with gguf_file= as quantized),
and a base model without a chat template cannot train on `messages` data. The export writes what
teachfit itself scores with: the dense weights (a GGUF dequantized, as teachfit dequantizes it)
as safetensors, config.json and generation_config.json, the tokenizer with the chat template
teachfit used (the model's own, else teachfit's default, DEFAULT_CHAT_TEMPLATE), and a README.md
saying where it came from. The folder is built beside `out` and renamed into place at the end,
so a killed export leaves no half folder at `out`.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

from teachfit.models.spec import ModelSpec, ModelSpecError

EXPORT_DTYPES = ("float32", "bfloat16")
EXPORTABLE = ("hf", "gguf", "packaged")


def _check_out(out: Path, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        if not force:
            raise ModelSpecError(f"{out} exists and is not a folder; pass --force to replace it")
    elif out.is_dir() and any(out.iterdir()) and not force:
        raise ModelSpecError(f"{out} is not empty; pass --force to replace it")


def _temporary(out: Path, what: str) -> Path:
    # one fixed name per `out`: a folder left by a killed export is removed by the next one
    return out.with_name(f".{out.name}.teachfit-export-{what}")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def source_identity(spec: ModelSpec) -> dict[str, Any]:
    """What identifies the weights exported: teachfit's fingerprint, the GGUF's sha256 (packaged:
    the checked one; gguf: computed) and, for a hub id, the revision transformers resolved."""
    identity: dict[str, Any] = {"spec": str(spec), "fingerprint": spec.fingerprint()}
    if spec.prefix == "packaged":
        from teachfit.models.packaged import PACKAGED

        identity["sha256"] = PACKAGED[spec.name].sha256
        identity["file"] = PACKAGED[spec.name].file_name
    elif spec.prefix == "gguf":
        from teachfit.env import sha256_file

        identity["sha256"] = sha256_file(Path(spec.name))
        identity["file"] = Path(spec.name).name
    return identity


def _readme(identity: dict[str, Any], template_name: str, template: str, dtype: str, model_class: str,
            files: list[str]) -> str:
    from teachfit.versions import versions

    version = versions().get("teachfit", "unknown")
    checksum = f"- sha256 of {identity['file']}: `{identity['sha256']}`\n" if "sha256" in identity else ""
    revision = f"- hub revision: `{identity['revision']}`\n" if identity.get("revision") else ""
    dequantized = " - dequantized from the GGUF file" if "sha256" in identity else ""
    if template_name == "model":
        template_text = "the model's own chat template (unchanged)."
    else:
        template_text = (f"teachfit's default chat template `{template_name}` (the model has none of its own); it is "
                         "the template teachfit scored and trained with, so `tokenizer.apply_chat_template` renders "
                         "exactly what teachfit measured.")
    return f"""---
library_name: transformers
tags: [teachfit]
---
# Exported by teachfit

A plain transformers folder of `{identity['spec']}`, written by `teachfit export-model` (teachfit {version},
{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}).

- source: `{identity['spec']}`
- teachfit fingerprint of the source: `{identity['fingerprint']}`
{checksum}{revision}- weights: dense {dtype}, safetensors ({', '.join(files)}){dequantized}
- architecture: `{model_class}`
- chat template: {template_text}

Load it with `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`
(no `gguf_file=`), and train it in TRL, Axolotl or any transformers trainer.

The chat template:

```jinja
{template}
```
"""


def export_model(spec: str | ModelSpec, out: str | os.PathLike, dtype: str = "float32", force: bool = False,
                 trust_remote_code: bool = False) -> dict[str, Any]:
    """Write `spec` (hf:, gguf: or packaged:) as a plain transformers folder at `out`.

    config.json, generation_config.json, the weights as safetensors only (dense, in `dtype`), the
    tokenizer with its chat template (teachfit's default when the model has none: the template
    teachfit scored with) and a README.md naming the source, its fingerprint/sha256 and the
    template. A non-empty `out` is refused unless `force`. Returns what was written."""
    from teachfit.env import require
    from teachfit.models.hf import load_causal_lm
    from teachfit.template import ensure_chat_template

    require("torch", "hf")
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(str(spec))
    if spec.prefix not in EXPORTABLE:
        raise ModelSpecError(f"{spec}: export-model takes hf:, gguf: or packaged: models, not {spec.prefix}: ones "
                             "(for a vllm: model, export hf:<the same id>)")
    if dtype not in EXPORT_DTYPES:
        raise ModelSpecError(f"--dtype {dtype}: use one of {' | '.join(EXPORT_DTYPES)}")
    out = Path(out).expanduser()
    _check_out(out, force)
    identity = source_identity(spec)
    loaded = load_causal_lm(spec, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    model, tokenizer = loaded.model, loaded.tokenizer
    template_name = ensure_chat_template(tokenizer)
    identity["revision"] = getattr(model.config, "_commit_hash", None) if spec.prefix == "hf" else None
    if hasattr(model.config, "quantization_config"):  # a dense model now: nothing for a trainer to refuse
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _temporary(out, "tmp"), _temporary(out, "old")
    _remove(tmp)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for path in tmp.iterdir():  # safetensors writes 0600; the folder is meant to be shared
            path.chmod(0o666 & ~mask)
        unsafe = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if unsafe:
            raise RuntimeError(f"transformers wrote pickled files {unsafe}; refusing to export them")
        weights = sorted(p.name for p in tmp.iterdir() if p.name.endswith(".safetensors"))
        template = tokenizer.chat_template
        template = template if isinstance(template, str) else json.dumps(template, indent=2)
        readme = _readme(identity, template_name, template, dtype, type(model).__name__, weights)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        (tmp / "teachfit-export.json").write_text(json.dumps(
            {**identity, "dtype": dtype, "template": template_name, "class": type(model).__name__}, indent=2))
        _check_out(out, force)  # still true after the minutes of loading
        if out.is_symlink() or out.exists():
            _remove(old)
            os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {"out": str(out), "spec": str(spec), "dtype": dtype, "template": template_name,
            "weights": weights, "bytes": size, **{k: v for k, v in identity.items() if k not in ("spec",)}}
