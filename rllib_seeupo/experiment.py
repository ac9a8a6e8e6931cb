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

A variant can start from another file: ``base: main.yaml`` takes that file's settings,
then its own keys are applied as a merge patch (``null`` removes a key of the base).

Every key under ``config`` must be a setting of the algorithm's config class (unknown keys
are an error naming the key). Besides those, ``module_class`` (a dotted path),
``model_config`` (a dict for the RLModule) and ``callbacks`` (a dotted path) are accepted.
A value ``{grid_search: [...]}`` becomes a Tune grid axis; ``{choice: [...]}``,
``{uniform: [low, high]}``, ``{loguniform: [low, high]}`` and ``{randint: [low, high]}``
(high excluded) are sampled by Tune, ``num_samples`` times per grid point:

.. code-block:: yaml

    num_samples: 4
    config:
      lr: {loguniform: [0.01, 0.3]}
      update_order: {grid_search: [reverse, parallel]}

``run`` may also name an RLlib built-in algorithm (``run: PPO``): on a ``seeupo/<name>``
env it gets the same wiring as SeeUPO (every ``turn_k`` agent on the one shared module,
whole episodes, list episodes, the learner connector that pads the LLM module's token ids;
see ``rllib_seeupo.presets.turn_agent_settings``), and its own settings under ``config``
(``train_batch_size_per_learner``, ``minibatch_size``, ``num_epochs``, ``vf_loss_coeff``...).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from pathlib import Path
from typing import Any

import yaml
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

TOP_LEVEL_KEYS = {"env", "run", "stop", "config", "checkpoint_freq", "num_samples", "metric", "mode", "evaluation", "torch_threads"}
# `evaluation`: held-out success before and after training (in-process runs); `before: false`
# skips the first measurement where it is known (the same base model in every run of a study).
EVALUATION_KEYS = {"split", "num_tasks", "k", "batch_size", "before"}
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


# A one-key mapping with one of these keys is a search axis (Tune's functions of that name).
SEARCH_KINDS = ("grid_search", "choice", "uniform", "loguniform", "randint")


def _search_kind(value: Any) -> str | None:
    """The kind of search axis ``value`` is (None: a plain value); bad arguments raise."""
    if not (isinstance(value, dict) and len(value) == 1):
        return None
    (kind, args), = value.items()
    if kind not in SEARCH_KINDS:
        return None
    if kind in ("grid_search", "choice"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{{{kind}: ...}} needs a non-empty list of values, got {args!r}")
        return kind
    numbers = isinstance(args, list) and len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
    )
    if not numbers or not args[0] < args[1]:
        raise ValueError(f"{{{kind}: [low, high]}} needs two numbers with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ValueError(f"{{loguniform: [low, high]}} needs low > 0, got {args!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ValueError(f"{{randint: [low, high]}} needs integers, got {args!r}")
    return kind


def _check_search_axes(value: Any, key: str = "config") -> None:
    """Raises a ValueError naming the key of the first malformed search axis."""
    if isinstance(value, dict):
        try:
            kind = _search_kind(value)
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from None
        if not kind:
            for k, v in value.items():
                _check_search_axes(v, f"{key}.{k}")


def _has_search(value: Any) -> bool:
    if isinstance(value, dict):
        if _search_kind(value):
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


def _read_spec(path: Path, seen: tuple[Path, ...] = ()) -> tuple[str, dict[str, Any]]:
    """The experiment name and settings of one YAML file, with its ``base`` merged in."""
    path = Path(path)
    if path.resolve() in seen:
        raise ValueError(f"{path}: 'base' files form a cycle")
    with open(path) as f:
        document = yaml.safe_load(f)
    if not isinstance(document, dict) or len(document) != 1:
        raise ValueError(f"{path}: expected exactly one experiment (a mapping name -> settings)")
    (name, spec), = document.items()
    spec = copy.deepcopy(spec or {})
    if "base" in spec:
        _, base = _read_spec(path.parent / spec.pop("base"), (*seen, path.resolve()))
        spec = merge_patch(base, spec)
    return name, spec


def merge_patch(base: Any, patch: Any) -> Any:
    """``patch`` applied to ``base`` as a JSON merge patch (RFC 7386): mappings merge key by
    key, a ``null`` value removes the key, anything else (a search axis too) replaces."""
    if not isinstance(patch, dict) or (len(patch) == 1 and next(iter(patch)) in SEARCH_KINDS):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Read a tuned-example YAML (one experiment) and apply ``--set`` overrides.

    ``base: other.yaml`` (a path relative to the file) starts from that file's settings and
    applies this file's as a merge patch (nested mappings merge, ``null`` removes a key),
    so a variant names only what differs from its main example."""
    name, spec = _read_spec(Path(path))
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
    if not isinstance((spec.get("evaluation") or {}).get("before", True), bool):
        raise ValueError(f"{path}: evaluation.before must be true or false")
    for required in ("env", "run"):
        if required not in spec:
            raise ValueError(f"{path}: experiment {name!r} needs a {required!r} key")
    try:
        _check_search_axes(spec.get("config") or {})
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
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
    from ray.rllib.algorithms.registry import ALGORITHMS as RLLIB_ALGORITHMS

    if run not in RLLIB_ALGORITHMS:
        known = sorted(set(ALGORITHMS) | set(RLLIB_ALGORITHMS))
        raise ValueError(f"unknown algorithm run: {run!r}; known: {known} (or a dotted path to an Algorithm class)")
    return RLLIB_ALGORITHMS[run]()[0]  # imports only that algorithm


def build_config(experiment: Experiment, *, resolve_search: bool = True):
    """The experiment's ``AlgorithmConfig``. With ``resolve_search`` a grid axis takes its
    first value (for in-process runs); Tune gets the axes through ``param_space``."""
    from rllib_seeupo.config import SeeUPOConfig

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
    if experiment.env.startswith("seeupo/") and not isinstance(config, SeeUPOConfig):
        # An RLlib built-in (`run: PPO`): the same turn-agent wiring as SeeUPO's.
        from rllib_seeupo.presets import turn_agent_settings

        turn_agent_settings(config)
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
    """One representative value per search axis (to build and validate one config): the
    first listed value, the middle of a uniform or log-uniform range, randint's low."""
    if isinstance(value, dict):
        kind = _search_kind(value)
        if kind in ("grid_search", "choice"):
            return copy.deepcopy(value[kind][0])
        if kind == "uniform":
            return (value[kind][0] + value[kind][1]) / 2
        if kind == "loguniform":
            return math.sqrt(value[kind][0] * value[kind][1])
        if kind == "randint":
            return value[kind][0]
        return {k: _first_of_grids(v) for k, v in value.items()}
    return copy.deepcopy(value)


def search_space(experiment: Experiment) -> dict[str, Any]:
    """The search axes of ``experiment.config`` as Tune search objects, by config key."""
    from ray import tune

    def convert(value):
        if isinstance(value, dict):
            kind = _search_kind(value)
            if kind in ("grid_search", "choice"):
                return getattr(tune, kind)(list(value[kind]))
            if kind:
                return getattr(tune, kind)(*value[kind])
            return {k: convert(v) for k, v in value.items()}
        return value

    return {k: convert(v) for k, v in experiment.config.items() if _has_search(v)}
