"""YAML tuned examples in RLlib's classic shape, mapped onto new-stack configs.

.. code-block:: yaml

    bandit-seeupo:
      env: seeupo/bandit
      run: SeeUPO
      stop: {training_iteration: 100}
      config:
        env_config: {num_turns: 4}
        lr: 0.05
        group_size: 8

Every key under ``config`` must be a setting of the algorithm's config class (unknown keys
are an error naming the key). Besides those, ``module_class`` (a dotted path),
``model_config`` (a dict for the RLModule) and ``callbacks`` (a dotted path) are accepted.
A value ``{grid_search: [...]}`` becomes a Tune grid axis.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from pathlib import Path
from typing import Any

import yaml
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

TOP_LEVEL_KEYS = {"env", "run", "stop", "config", "checkpoint_freq", "num_samples", "metric", "mode", "evaluation", "torch_threads"}
# `evaluation`: held-out success before and after training (in-process runs).
EVALUATION_KEYS = {"split", "num_tasks", "k", "batch_size"}
SPECIAL_CONFIG_KEYS = {"module_class", "model_config", "callbacks"}


@dataclasses.dataclass
class Experiment:
    """One experiment of a tuned-example file."""

    name: str
    run: str
    env: str
    stop: dict[str, Any]
    config: dict[str, Any]
    checkpoint_freq: int = 0
    num_samples: int = 1
    metric: str = "rollouts/reward_mean"
    mode: str = "max"
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Intra-op threads of the process that runs the algorithm in-process (--no-tune): 1 suits
    # small models next to Ray workers; an LLM with everything in-process wants every core.
    torch_threads: int | None = None

    def has_search_space(self) -> bool:
        return _has_search(self.config) or self.num_samples > 1


def _has_search(value: Any) -> bool:
    if isinstance(value, dict):
        if set(value) == {"grid_search"}:
            return True
        return any(_has_search(v) for v in value.values())
    return False


def import_object(path: str) -> Any:
    """``"package.module.Name"`` -> the object."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"expected a dotted path like 'package.module.Name', got {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"config.lr=0.1"`` -> (["config", "lr"], 0.1). Keys without a top-level section
    (``lr=0.1``) go under ``config``; the value is read as YAML."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, _, raw = text.partition("=")
    path = key.strip().split(".")
    if path[0] not in TOP_LEVEL_KEYS:
        path = ["config", *path]
    return path, yaml.safe_load(raw)


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Read a tuned-example YAML (one experiment) and apply ``--set`` overrides."""
    with open(path) as f:
        document = yaml.safe_load(f)
    if not isinstance(document, dict) or len(document) != 1:
        raise ValueError(f"{path}: expected exactly one experiment (a mapping name -> settings)")
    (name, spec), = document.items()
    spec = copy.deepcopy(spec or {})
    for text in overrides:
        keys, value = parse_override(text)
        node = spec
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    unknown = set(spec) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)} in experiment {name!r}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    unknown = set(spec.get("evaluation") or {}) - EVALUATION_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown evaluation key(s) {sorted(unknown)}; allowed: {sorted(EVALUATION_KEYS)}")
    for required in ("env", "run"):
        if required not in spec:
            raise ValueError(f"{path}: experiment {name!r} needs a {required!r} key")
    return Experiment(
        name=name,
        run=spec["run"],
        env=spec["env"],
        stop=dict(spec.get("stop") or {}),
        config=dict(spec.get("config") or {}),
        checkpoint_freq=int(spec.get("checkpoint_freq", 0)),
        num_samples=int(spec.get("num_samples", 1)),
        metric=spec.get("metric", "rollouts/reward_mean"),
        mode=spec.get("mode", "max"),
        evaluation=dict(spec.get("evaluation") or {}),
        torch_threads=spec.get("torch_threads"),
    )


def algorithm_class(run: str):
    """The Algorithm class for ``run``: one of ours by name, an RLlib built-in (``PPO``),
    or a dotted path."""
    import rllib_seeupo  # noqa: F401  (registers envs and algorithms)
    from rllib_seeupo.presets import ALGORITHMS

    if run in ALGORITHMS:
        return ALGORITHMS[run]
    if "." in run:
        return import_object(run)
    from ray.rllib.algorithms.registry import get_algorithm_class

    return get_algorithm_class(run)


def build_config(experiment: Experiment, *, resolve_search: bool = True):
    """The experiment's ``AlgorithmConfig``. With ``resolve_search`` a grid axis takes its
    first value (for in-process runs); Tune gets the axes through ``param_space``."""
    algo_cls = algorithm_class(experiment.run)
    config = algo_cls.get_default_config()
    settings = _first_of_grids(experiment.config) if resolve_search else copy.deepcopy(experiment.config)
    special = {k: settings.pop(k) for k in list(settings) if k in SPECIAL_CONFIG_KEYS}
    for key in settings:
        translated = config._translate_special_keys(key, warn_deprecated=False)
        if not hasattr(config, translated) or key.startswith("_"):
            raise ValueError(
                f"experiment {experiment.name!r}: unknown config key {key!r} for {type(config).__name__}"
            )
    config.environment(experiment.env)
    config.update_from_dict(settings)
    if "module_class" in special or "model_config" in special:
        spec_kwargs = {}
        if "module_class" in special:
            spec_kwargs["module_class"] = import_object(special["module_class"])
        module_kwargs = {}
        if spec_kwargs:
            module_kwargs["rl_module_spec"] = RLModuleSpec(**spec_kwargs)
        if "model_config" in special:
            module_kwargs["model_config"] = special["model_config"]
        config.rl_module(**module_kwargs)
    if "callbacks" in special:
        config.callbacks(import_object(special["callbacks"]))
    return config


def _first_of_grids(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"grid_search"}:
            return copy.deepcopy(value["grid_search"][0])
        return {k: _first_of_grids(v) for k, v in value.items()}
    return copy.deepcopy(value)


def search_space(experiment: Experiment) -> dict[str, Any]:
    """The grid axes of ``experiment.config`` as Tune search objects, by config key."""
    from ray import tune

    def convert(value):
        if isinstance(value, dict):
            if set(value) == {"grid_search"}:
                return tune.grid_search(list(value["grid_search"]))
            return {k: convert(v) for k, v in value.items()}
        return value

    return {k: convert(v) for k, v in experiment.config.items() if _has_search(v)}
