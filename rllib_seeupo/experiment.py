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
import inspect
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

TOP_LEVEL_KEYS = {
    "env", "run", "stop", "config", "checkpoint_freq", "num_samples", "metric", "mode", "evaluation", "torch_threads", "warm_start",
}
# `evaluation`: held-out evaluation through RLlib's evaluation config, in both modes (see
# `evaluation_settings`); `before: false` skips the measurement of the untrained policy where
# it is known (the same base model in every run of a study).
EVALUATION_KEYS = {"split", "num_tasks", "k", "batch_size", "before", "interval"}
# The metric Tune trials are ranked by: held-out success where the experiment measures it.
HELD_OUT_METRIC = "evaluation/success_rate"
SPECIAL_CONFIG_KEYS = {"module_class", "model_config", "callbacks"}
# `warm_start`: supervised fine-tuning on the env's demonstrations of the first
# `demonstrations` train tasks before RL (rllib_seeupo.llm.warm_start); the result is cached
# by its settings and becomes model_config.model. Defaults:
WARM_START_DEFAULTS = {"demonstrations": 16, "steps": 40, "batch_size": 8, "lr": 1e-4, "seed": 0}


class ConfigError(ValueError):
    """A bad experiment file, override or command-line value; the message names it."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2's exponent floats: ``1e-4`` is a number, as in
    JSON, not the string that YAML 1.1 makes of it (``--set lr=1e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """``while scanning ...: found ...`` from a PyYAML error, on one line."""
    parts = [getattr(error, "context", None), getattr(error, "problem", None)]
    text = ": ".join(p for p in parts if p) or str(error)
    return " ".join(text.split())


def read_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML; a syntax error becomes a ConfigError naming ``where`` and,
    for a file, the line and column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: invalid YAML{at}: {_yaml_problem(error)}") from None


def parse_key_value(item: str, flag: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` (from ``flag``, e.g. ``--set``) -> (["a", "b"], value read as YAML)."""
    if "=" not in item:
        raise ConfigError(f"{flag} expects key=value, got {item!r}")
    key, _, raw = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not all(path):
        raise ConfigError(f"{flag} {item!r}: empty key; expected key=value or section.key=value")
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{flag} {item!r}: value {raw!r} is not valid YAML{at}: {_yaml_problem(error)}") from None
    return path, value


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
    # Supervised fine-tuning before RL (``WARM_START_DEFAULTS`` filled in); None: none.
    warm_start: dict[str, Any] | None = None

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
    module_name, _, attr = path.rpartition(".") if isinstance(path, str) else ("", "", "")
    if not module_name or not attr:
        raise ConfigError(f"expected a dotted path like 'package.module.Name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"cannot import {path!r}: {error}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"cannot import {path!r}: module {module_name!r} has no {attr!r}")
    return getattr(module, attr)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"config.lr=0.1"`` -> (["config", "lr"], 0.1). Keys without a top-level section
    (``lr=0.1``) go under ``config``; the value is read as YAML."""
    path, value = parse_key_value(text, "--set")
    if path[0] not in TOP_LEVEL_KEYS:
        path = ["config", *path]
    return path, value


def _apply_override(spec: dict[str, Any], text: str) -> None:
    keys, value = parse_override(text)
    node = spec
    for depth, key in enumerate(keys[:-1]):
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(
                f"--set {text!r}: {'.'.join(keys[: depth + 1])} is {node!r}, not a mapping, "
                f"so it has no key {keys[depth + 1]!r}"
            )
    node[keys[-1]] = value


def read_text_file(path: Path, what: str = "file") -> str:
    """The text of ``path``; a missing file or a folder is a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a {what}")
    if not path.exists():
        raise ConfigError(f"{path}: no such {what}")
    try:
        return path.read_text()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text {what} ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what}: {error.strerror or error}") from None


def _read_spec(path: Path, seen: tuple[Path, ...] = ()) -> tuple[str, dict[str, Any]]:
    """The experiment name and settings of one YAML file, with its ``base`` merged in."""
    path = Path(path)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files form a cycle")
    document = read_yaml(read_text_file(path, "YAML file"), str(path))
    if not isinstance(document, dict) or len(document) != 1:
        raise ConfigError(f"{path}: expected exactly one experiment (a mapping name -> settings)")
    (name, spec), = document.items()
    if spec is not None and not isinstance(spec, dict):
        raise ConfigError(f"{path}: the settings of experiment {name!r} must be a mapping, got {spec!r}")
    spec = copy.deepcopy(spec or {})
    if "base" in spec:
        base_name = spec.pop("base")
        if not isinstance(base_name, str) or not base_name:
            raise ConfigError(f"{path}: 'base' must name a YAML file, got {base_name!r}")
        base_path = path.parent / base_name
        if not base_path.is_file():
            raise ConfigError(f"{path}: base file {base_name!r} not found (looked for {base_path})")
        _, base = _read_spec(base_path, (*seen, path.resolve()))
        spec = merge_patch(base, spec)
    return str(name), spec


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
        _apply_override(spec, text)
    unknown = set(spec) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)} in experiment {name!r}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    for key in ("stop", "config", "evaluation", "warm_start"):
        if not isinstance(spec.get(key) or {}, dict):
            raise ConfigError(f"{path}: {key} must be a mapping, got {spec[key]!r}")
    unknown = set(spec.get("evaluation") or {}) - EVALUATION_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown evaluation key(s) {sorted(unknown)}; allowed: {sorted(EVALUATION_KEYS)}")
    evaluation = dict(spec.get("evaluation") or {})
    if not isinstance(evaluation.get("before", True), bool):
        raise ConfigError(f"{path}: evaluation.before must be true or false")
    for key in ("num_tasks", "k", "batch_size", "interval"):
        _check_int(evaluation, key, 1, f"{path}: evaluation.{key}")
    if not isinstance(evaluation.get("split", "test"), str):
        raise ConfigError(f"{path}: evaluation.split must be a split name, got {evaluation['split']!r}")
    warm = spec.get("warm_start")
    if warm is not None:
        unknown = set(warm) - set(WARM_START_DEFAULTS)
        if unknown:
            raise ConfigError(f"{path}: unknown warm_start key(s) {sorted(unknown)}; allowed: {sorted(WARM_START_DEFAULTS)}")
        warm = {**WARM_START_DEFAULTS, **warm}
        for key in ("demonstrations", "steps", "batch_size"):
            _check_int(warm, key, 1, f"{path}: warm_start.{key}")
        _check_int(warm, "seed", 0, f"{path}: warm_start.seed")
        if not isinstance(warm["lr"], (int, float)) or isinstance(warm["lr"], bool) or not warm["lr"] > 0:
            raise ConfigError(f"{path}: warm_start.lr must be a positive number, got {warm['lr']!r}")
    for required in ("env", "run"):
        if required not in spec:
            raise ConfigError(f"{path}: experiment {name!r} needs a {required!r} key")
        if not isinstance(spec[required], str) or not spec[required]:
            raise ConfigError(f"{path}: {required} must be a name, got {spec[required]!r}")
    stop = dict(spec.get("stop") or {})
    check_stop(stop, f"{path}: stop")
    _check_int(spec, "checkpoint_freq", 0, f"{path}: checkpoint_freq")
    _check_int(spec, "num_samples", 1, f"{path}: num_samples")
    if spec.get("torch_threads") is not None:
        _check_int(spec, "torch_threads", 1, f"{path}: torch_threads")
    if not isinstance(spec.get("metric") or "", str):
        raise ConfigError(f"{path}: metric must be a result key like 'rollouts/reward_mean', got {spec['metric']!r}")
    held_out_metric = str(spec.get("metric") or "").startswith(("evaluation/", "evaluation_before/"))
    if held_out_metric and not evaluation and not (spec.get("config") or {}).get("evaluation_interval"):
        raise ConfigError(f"{path}: metric {spec['metric']!r} is a held-out figure, but the experiment has no 'evaluation' section")
    if spec.get("mode", "max") not in ("max", "min"):
        raise ConfigError(f"{path}: mode must be 'max' or 'min', got {spec['mode']!r}")
    config = dict(spec.get("config") or {})
    for key in ("env_config", "model_config"):
        if not isinstance(config.get(key) or {}, dict):
            raise ConfigError(f"{path}: config.{key} must be a mapping, got {config[key]!r}")
    for key in ("module_class", "callbacks"):
        if key in config and not isinstance(config[key], str):
            raise ConfigError(f"{path}: config.{key} must be a dotted path like 'package.module.Name', got {config[key]!r}")
    try:
        _check_search_axes(config)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    return Experiment(
        name=name,
        run=spec["run"],
        env=spec["env"],
        stop=stop,
        config=config,
        checkpoint_freq=int(spec.get("checkpoint_freq", 0)),
        num_samples=int(spec.get("num_samples", 1)),
        metric=spec.get("metric") or (HELD_OUT_METRIC if evaluation else "rollouts/reward_mean"),
        mode=spec.get("mode", "max"),
        evaluation=evaluation,
        torch_threads=spec.get("torch_threads"),
        warm_start=warm,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(settings: dict[str, Any], key: str, minimum: int, where: str) -> None:
    if key in settings and not (_is_int(settings[key]) and settings[key] >= minimum):
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {settings[key]!r}")


def check_stop(stop: dict[str, Any], where: str = "stop") -> None:
    """Stop criteria are result keys (``a/b`` nests, as in Tune) with numeric thresholds:
    training stops once any result reaches its value (``reporting.should_stop``)."""
    for key, value in stop.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split("/")):
            raise ConfigError(f"{where}: {key!r} is not a result key (e.g. training_iteration, env_runners/episode_return_mean)")
        if isinstance(value, dict):
            raise ConfigError(f"{where}.{key} must be a number; nest result keys with '/', e.g. '{key}/...: 1.0'")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ConfigError(f"{where}.{key} must be a number (training stops once the result reaches it), got {value!r}")


def _env_parameters(env_fn) -> list[str] | None:
    """The settings ``env_fn(**config)`` accepts (its module's ``raw_env`` parameters when
    ``env_fn`` forwards ``**config``, as PettingZoo's convention has it); None when they
    cannot be listed."""
    raw_env = getattr(inspect.getmodule(env_fn), "raw_env", None)
    for target in (env_fn, raw_env):
        if target is None:
            continue
        try:
            parameters = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return None
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return None


def check_env(env: str, env_config: Any = None, *, where: str = "env_config", splits: dict[str, str] | None = None):
    """Check an env name and its settings before anything starts; returns the env.

    A ``seeupo/<name>`` env (``register_turn_env``) is built once, here (never reset: no
    server or model is contacted), so an unknown name or setting fails in the
    driver, naming it; ``splits`` (label -> split) are checked to have tasks. Other names
    are RLlib's: a gymnasium id or a Tune-registered name (a namespaced ``ns/Name``,
    ``module:Name`` or dotted class path is passed on unchecked); returns None for them."""
    from rllib_seeupo.turn_env import TURN_ENVS, resolve_env_fn

    seeupo = [f"seeupo/{name}" for name in TURN_ENVS]
    if not isinstance(env_config or {}, dict):
        raise ConfigError(f"{where} must be a mapping of env settings, got {env_config!r}")
    env_config = dict(env_config or {})
    if not env.startswith("seeupo/"):
        import gymnasium
        from ray.tune.registry import ENV_CREATOR, _global_registry

        if env in gymnasium.registry or _global_registry.contains(ENV_CREATOR, env) or any(c in env for c in "/:."):
            return None
        hint = f"; did you mean 'seeupo/{env}'?" if env in TURN_ENVS else ""
        raise ConfigError(
            f"unknown env {env!r}: not one of {', '.join(seeupo)}, a gymnasium id or a registered env{hint}"
        )
    name = env.removeprefix("seeupo/")
    if name not in TURN_ENVS:
        raise ConfigError(f"unknown env {env!r}; allowed: {', '.join(seeupo)}")
    try:
        env_fn = resolve_env_fn(TURN_ENVS[name])
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{env}: its env function {TURN_ENVS[name]!r} cannot be imported: {error}") from None
    allowed = _env_parameters(env_fn)
    unknown = [key for key in env_config if allowed is not None and key not in allowed]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ConfigError(
            f"unknown {where} key{'s' if len(unknown) > 1 else ''} {keys} for {env}; allowed: {', '.join(allowed)}"
        )
    try:
        built = env_fn(**env_config)
    except (TypeError, ValueError, KeyError, ImportError, OSError) as error:
        kind = "" if isinstance(error, (ValueError, ImportError)) else f"{type(error).__name__}: "
        raise ConfigError(f"{where} for {env}: {kind}{error}") from None
    for label, split in (splits or {}).items():
        try:
            tasks = built.unwrapped.task_ids(split)
        except (ValueError, KeyError, OSError) as error:
            raise ConfigError(f"{label}: {error}") from None
        if not len(tasks):
            raise ConfigError(f"{label}: no tasks in split {split!r} of {env}")
    return built


def _model_candidates(value: Any) -> list[Any]:
    kind = _search_kind(value)
    return list(value[kind]) if kind in ("grid_search", "choice") else [value]


def validate_experiment(experiment: Experiment, where: str | Path = "") -> None:
    """The checks that need more than the file: the env is built once (unknown env names
    and settings fail here) and an LLM module's model is checked to exist (a packaged
    alias, a folder or ``hf:<hub id>``; nothing is loaded). Run before Ray starts.
    A relative model folder becomes absolute (Tune trials run in their own folders)."""
    prefix = f"{where}: " if where else ""
    settings = _first_of_grids(experiment.config)
    from rllib_seeupo.presets import ALGORITHMS

    splits = {}
    if experiment.evaluation and not experiment.env.startswith("seeupo/"):
        raise ConfigError(f"{prefix}evaluation plays a 'seeupo/<name>' env's held-out tasks; env is {experiment.env!r}")
    if experiment.env.startswith("seeupo/"):
        if experiment.run in ALGORITHMS:  # ours draw training tasks from the train split
            splits[f"env {experiment.env}"] = "train"
        if experiment.evaluation:
            splits["evaluation.split"] = experiment.evaluation.get("split", "test")
    if experiment.warm_start and experiment.env.startswith("seeupo/"):
        splits["warm_start"] = "train"
    try:
        built = check_env(experiment.env, settings.get("env_config"), splits=splits)
    except ConfigError as error:
        raise ConfigError(f"{prefix}{error}") from None
    if experiment.warm_start and not hasattr(getattr(built, "unwrapped", None), "demonstrations"):
        raise ConfigError(f"{prefix}warm_start needs a 'seeupo/<name>' env with demonstrations(task_ids); {experiment.env} has none")
    if "module_class" not in settings:
        if experiment.warm_start:
            raise ConfigError(f"{prefix}warm_start fine-tunes an LLM module; config.module_class names none")
        return
    module_class = import_object(settings["module_class"])
    # A subclass of the LLM module has imported it; nothing else needs torch here.
    llm = sys.modules.get("rllib_seeupo.llm.module")
    if llm is None or not (isinstance(module_class, type) and issubclass(module_class, llm.LLMRLModule)):
        if experiment.warm_start:
            raise ConfigError(f"{prefix}warm_start fine-tunes an LLM module; {settings['module_class']} is not one")
        return
    if experiment.warm_start and _has_search(experiment.config.get("model_config") or {}):
        raise ConfigError(f"{prefix}warm_start needs one model_config; it has a search axis")
    model_config = settings.get("model_config") or {}
    unknown = sorted(set(model_config) - set(llm.DEFAULTS))
    if unknown:
        raise ConfigError(
            f"{prefix}unknown model_config key(s) {unknown} for {module_class.__name__}; allowed: {sorted(llm.DEFAULTS)}"
        )
    try:
        checked = llm.checked_settings(model_config)
    except ValueError as error:
        raise ConfigError(f"{prefix}model_config: {str(error).removeprefix('LLMRLModule: ')}") from None
    engine = checked["engine"]
    if engine["num_engines"]:
        if experiment.run not in ALGORITHMS:
            raise ConfigError(f"{prefix}model_config.engine.num_engines: engine actors are started by SeeUPO's algorithms; "
                              f"run {experiment.run!r} generates in its env runners (set it to 0)")
        runners = max(int(settings.get("num_env_runners") or 0), 1)
        if engine["num_engines"] > runners:
            raise ConfigError(f"{prefix}model_config.engine.num_engines is {engine['num_engines']}, more than the "
                              f"{runners} env runner(s) that send to them")
        if engine["placement"] == "colocated":
            _check_colocated(engine, settings, prefix)
        if settings.get("num_gpus_per_env_runner"):
            raise ConfigError(f"{prefix}num_gpus_per_env_runner: with engine actors the env runners hold no model; "
                              "set it to 0 (the engines' GPUs are engine.num_gpus_per_engine)")
    from rllib_seeupo.llm.models import check_model

    raw_config = experiment.config.get("model_config") or {}
    plain = not _search_kind(raw_config)
    raw = (raw_config if plain else model_config).get("model", llm.DEFAULTS["model"])
    for model in _model_candidates(raw):
        try:
            check_model(model)
        except ValueError as error:
            raise ConfigError(f"{prefix}model_config.model: {error}") from None
    if plain and isinstance(raw, str) and not Path(raw).is_absolute() and Path(raw).is_dir():
        experiment.config["model_config"]["model"] = os.path.abspath(raw)


def _check_colocated(engine: dict, settings: dict, prefix: str) -> None:
    """Colocated engines run on the learners' GPUs, one engine on each (engine i on learner
    i's; with ``num_learners`` 0 on the driver's learner)."""
    learners = max(int(settings.get("num_learners") or 0), 1)
    if engine["num_engines"] != learners:
        raise ConfigError(f"{prefix}model_config.engine.num_engines is {engine['num_engines']}; placement 'colocated' "
                          f"puts one engine on each learner's GPU: set it to {learners}")
    if engine["tensor_parallel_size"] > 1:
        raise ConfigError(f"{prefix}model_config.engine.tensor_parallel_size is {engine['tensor_parallel_size']}; a "
                          "colocated engine sees its learner's one GPU: set it to 1, or use placement 'split'")
    gpus = settings.get("num_gpus_per_learner") or 0
    if gpus not in (0, 1) or (engine["kind"] == "vllm" and gpus != 1):
        need = "1" if engine["kind"] == "vllm" else "1 (or 0 for a learner on CPU)"
        raise ConfigError(f"{prefix}num_gpus_per_learner is {gpus}; with placement 'colocated' each learner holds a "
                          f"whole GPU that its engine shares: set it to {need}")


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
        raise ConfigError(f"unknown algorithm run: {run!r}; known: {known} (or a dotted path to an Algorithm class)")
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
    def imported(key: str):
        try:
            return import_object(special[key])
        except ConfigError as error:
            raise ConfigError(f"experiment {experiment.name!r}: config.{key}: {error}") from None

    if "module_class" in special or "model_config" in special:
        spec_kwargs = {}
        if "module_class" in special:
            spec_kwargs["module_class"] = imported("module_class")
        module_kwargs = {}
        if spec_kwargs:
            module_kwargs["rl_module_spec"] = RLModuleSpec(**spec_kwargs)
        if "model_config" in special:
            module_kwargs["model_config"] = special["model_config"]
        config.rl_module(**module_kwargs)
    if "callbacks" in special:
        config.callbacks(imported("callbacks"))
    if experiment.evaluation:
        from rllib_seeupo.evaluation import held_out_evaluation

        held_out_evaluation(config, **evaluation_settings(experiment))
    return config


def evaluation_settings(experiment: Experiment) -> dict[str, Any]:
    """The ``held_out_evaluation`` arguments of the YAML ``evaluation:`` section, the same
    in Tune and in-process runs: ``split`` (default test), ``num_tasks`` (100), ``k`` (1),
    ``batch_size`` (64), ``before`` (true: measure the untrained policy too) and
    ``interval`` (evaluate every N iterations; default: at ``stop.training_iteration``);
    whatever the interval, the policy is also measured in the result that reaches the stop
    budget (``at_stop``), in a Tune trial as in an in-process run."""
    spec = experiment.evaluation
    interval = spec.get("interval")
    last = experiment.stop.get("training_iteration")
    if interval is None and isinstance(last, (int, float)) and not isinstance(last, bool) and last >= 1:
        interval = math.ceil(last)  # Tune stops once training_iteration >= the value
    return {
        "num_tasks": int(spec.get("num_tasks", 100)),
        "interval": interval,
        "split": spec.get("split", "test"),
        "k": int(spec.get("k", 1)),
        "batch_size": int(spec.get("batch_size", 64)),
        "before": bool(spec.get("before", True)),
        # The CLI's own stop when the file has none: one iteration.
        "at_stop": dict(experiment.stop) or {"training_iteration": 1},
    }


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


# Moves on when the warm start's computation changes, so that cached models are not reused.
WARM_START_VERSION = 1


def warm_start_folder(experiment: Experiment) -> tuple[Path, list]:
    """Where the experiment's warm-started model is cached, named by a hash of everything it
    depends on (the model, its LoRA shape and response encoding, the demonstration chats
    themselves, the warm start's settings, ``WARM_START_VERSION``), and the chats."""
    import hashlib
    import json

    from rllib_seeupo.llm.models import cache_dir
    from rllib_seeupo.llm.module import DEFAULTS
    from rllib_seeupo.turn_env import TURN_ENVS, resolve_env_fn

    settings = {**DEFAULTS, **(experiment.config.get("model_config") or {})}
    env_config = experiment.config.get("env_config") or {}
    env = resolve_env_fn(TURN_ENVS[experiment.env.removeprefix("seeupo/")])(**env_config).unwrapped
    chats = env.demonstrations(list(env.task_ids("train")[: experiment.warm_start["demonstrations"]]))
    key = json.dumps({
        "version": WARM_START_VERSION, "model": settings["model"], "lora": settings["lora"],
        "response_prefix": settings["response_prefix"], "stop_strings": settings["stop_strings"], "chats": chats,
        **experiment.warm_start,
    }, sort_keys=True, default=str)
    return cache_dir() / "warm_start" / hashlib.sha256(key.encode()).hexdigest()[:16], chats


def prepare_warm_start(experiment: Experiment) -> dict[str, Any] | None:
    """Run the experiment's ``warm_start`` (supervised fine-tuning on the env's
    demonstrations of its first train tasks; ``rllib_seeupo.llm.warm_start``) unless a run
    with the same settings and demonstrations left its model in the cache, and make that
    model folder the experiment's ``model_config.model``. Returns the warm start's record
    (its ``path`` added), None without a ``warm_start`` section. Call after
    ``validate_experiment``. Processes that start the same warm start at once take turns
    (a file lock): one trains, the others reuse its folder."""
    if not experiment.warm_start:
        return None
    import fcntl
    import json
    import shutil

    from rllib_seeupo.llm.module import DEFAULTS
    from rllib_seeupo.llm.warm_start import RECORD, warm_start

    model_config = experiment.config.setdefault("model_config", {})
    settings = {**DEFAULTS, **model_config}
    warm = experiment.warm_start
    folder, chats = warm_start_folder(experiment)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / RECORD).exists():
            # Written aside, then renamed: an interrupted warm start never looks complete.
            tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"warm start: {warm['steps']} steps on the demonstrations of {len(chats)} train tasks", flush=True)
            warm_start(settings["model"], chats, tmp, response_prefix=settings["response_prefix"],
                       stop_strings=settings["stop_strings"], lora=settings["lora"], steps=warm["steps"],
                       batch_size=warm["batch_size"], lr=warm["lr"], seed=warm["seed"])
            shutil.rmtree(folder, ignore_errors=True)  # a folder without its record: an older, broken one
            tmp.replace(folder)
    record = json.loads((folder / RECORD).read_text())
    model_config["model"] = str(folder)
    return {**record, "path": str(folder)}
