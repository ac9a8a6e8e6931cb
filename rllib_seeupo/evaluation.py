"""Held-out evaluation: run a turn policy over an env's test tasks, many episodes at once.

``evaluate`` plays the episodes; ``held_out_evaluation(config, ...)`` makes it RLlib's
evaluation of an algorithm (``config.evaluation(custom_evaluation_function=...)``), so that
its figures land under ``evaluation/`` in the training results (Tune, TensorBoard,
``algo.evaluate()``) for SeeUPO, every preset and RLlib's PPO alike.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from rllib_seeupo.turn_env import make_turn_env

# policy(observations, sample) -> actions, one per observation, generated as one batch.
BatchPolicy = Callable[[list[Any], bool], list[str]]

# End-of-episode info keys that split results into groups (BFCL category, task level).
GROUP_KEYS = ("category", "level")
# End-of-episode info keys averaged into ``<key>_mean`` (AppWorld's share of passed tests,
# BFCL's partial credit).
EXTRA_METRICS = ("passed_fraction", "partial_credit")


def module_policy(module) -> BatchPolicy:
    """A batch policy from an RLModule with ``_forward_inference`` / ``_forward_exploration``
    returning text actions (the LLM module)."""
    import torch
    from ray.rllib.core.columns import Columns

    def policy(observations: list[Any], sample: bool) -> list[str]:
        batch = {Columns.OBS: np.array(observations, dtype=object)}
        with torch.no_grad():
            out = module._forward_exploration(batch) if sample else module._forward_inference(batch)
        return [str(a) for a in out[Columns.ACTIONS]]

    return policy


def evaluate(
    policy: BatchPolicy,
    env_name: str,
    env_config: dict | None,
    task_ids: Sequence,
    *,
    k: int = 1,
    sample: bool = False,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Play every task ``k`` times; episodes advance together, one policy batch per step.

    Returns ``success_rate`` (mean over episodes: avg@k), ``pass_at_k`` (share of tasks
    solved at least once), ``reward_mean``, ``turns_mean``, ``parse_error_rate`` (per turn),
    ``truncation_rate``, ``num_episodes`` and ``seconds``; ``<key>_mean`` for the
    ``EXTRA_METRICS`` an env reports; and, when every episode's info names a group
    (``GROUP_KEYS``: a BFCL category, a task level), the same figures per group under
    ``groups`` (keyed by the group's value as text, with ``group_by`` naming the key), with
    ``blind_success`` where the env has ``blind_baselines(task_ids)`` (the success of the
    best policy that never reads a tool result).
    """
    start = time.time()
    jobs = [(task, r) for task in task_ids for r in range(k)]
    records: list[dict[str, Any]] = []
    envs = [make_turn_env(env_name, env_config) for _ in range(min(batch_size, len(jobs)))]
    next_job = 0
    live: dict[int, dict[str, Any]] = {}  # env index -> episode state

    def start_episode(i: int) -> None:
        nonlocal next_job
        task, _ = jobs[next_job]
        next_job += 1
        obs, _ = envs[i].reset(options={"task_id": task})
        live[i] = {"task": task, "obs": obs, "turns": 0}

    for i in range(len(envs)):
        if next_job < len(jobs):
            start_episode(i)
    while live:
        order = list(live)
        agents = [next(iter(live[i]["obs"])) for i in order]
        actions = policy([live[i]["obs"][a] for i, a in zip(order, agents)], sample)
        for i, agent, action in zip(order, agents, actions):
            obs, rewards, terminated, truncated, infos = envs[i].step({agent: action})
            live[i]["turns"] += 1
            if terminated["__all__"] or truncated["__all__"]:
                info = next(iter(infos.values()), {}) if infos else {}
                records.append(
                    {
                        # Numeric end-of-episode infos (e.g. `passed_fraction`) and the
                        # group keys are kept for per-group tables.
                        **{k: v for k, v in info.items() if k in GROUP_KEYS or _is_number(v)},
                        "task": live[i]["task"],
                        "reward": float(max(rewards.values())) if rewards else 0.0,
                        "success": float(info.get("success", float(max(rewards.values(), default=0.0) > 0))),
                        "turns": live[i]["turns"],
                        "parse_errors": info.get("parse_errors", 0),
                        "truncated": bool(truncated["__all__"]),
                    }
                )
                del live[i]
                if progress:
                    progress(len(records), len(jobs))
                if next_job < len(jobs):
                    start_episode(i)
            else:
                live[i]["obs"] = obs
    result = summarise(records, k)
    # An env that knows its blind baselines (the best policy that ignores every tool result)
    # reports them per group, so that every table shows what a group's figure must beat.
    blind_baselines = getattr(envs[0].env.unwrapped, "blind_baselines", None) if envs else None
    if blind_baselines is not None and result.get("groups"):
        for name, value in blind_baselines(list(task_ids)).items():
            if name in result["groups"]:
                result["groups"][name]["blind_success"] = float(value)
    result["seconds"] = time.time() - start
    return result


def summarise(records: list[dict[str, Any]], k: int, *, by_group: bool = True) -> dict[str, Any]:
    """Metrics over finished episodes (see ``evaluate``), overall and per group."""
    by_task: dict[Any, list[float]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r["success"])
    turns = sum(r["turns"] for r in records)
    result: dict[str, Any] = {
        "success_rate": float(np.mean([r["success"] for r in records])) if records else 0.0,
        "pass_at_k": float(np.mean([max(v) for v in by_task.values()])) if by_task else 0.0,
        "k": k,
        "reward_mean": float(np.mean([r["reward"] for r in records])) if records else 0.0,
        "turns_mean": turns / max(len(records), 1),
        "parse_error_rate": sum(r["parse_errors"] for r in records) / max(turns, 1),
        "truncation_rate": float(np.mean([r["truncated"] for r in records])) if records else 0.0,
        "num_episodes": len(records),
    }
    extras = sorted({key for r in records for key, v in r.items() if key in EXTRA_METRICS and _is_number(v)})
    for key in extras:
        result[f"{key}_mean"] = float(np.mean([r[key] for r in records if key in r]))
    group_key = next((key for key in GROUP_KEYS if by_group and records and all(key in r for r in records)), None)
    if group_key is not None:
        result["group_by"] = group_key
        result["groups"] = {
            str(value): summarise([r for r in records if r[group_key] == value], k, by_group=False)
            for value in sorted({r[group_key] for r in records}, key=str)
        }
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# What ``model_config`` may change on a restored checkpoint: how it decodes and with which
# rollout engine, not its weights or prompt format.
CHECKPOINT_OVERRIDES = ("max_prompt_tokens", "max_new_tokens", "temperature", "top_p", "stop_strings", "engine")


def check_model_spec(model: str, model_config: dict[str, Any] | None = None) -> None:
    """Cheap checks of ``load_module``'s arguments (nothing is loaded, nothing looked up
    online): ``model`` is a checkpoint, a packaged alias, a model folder or ``hf:<id>``,
    and ``model_config`` sets only what that kind of model allows. Raises a ValueError."""
    from rllib_seeupo.llm.models import check_model, is_checkpoint

    try:
        check_model(model, checkpoints=True)
    except ValueError as error:
        raise ValueError(f"--model: {error}") from None
    overrides = set(model_config or {})
    if is_checkpoint(model):
        if overrides - set(CHECKPOINT_OVERRIDES):
            raise ValueError(
                f"model_config overrides for a checkpoint may only set {sorted(CHECKPOINT_OVERRIDES)}, "
                f"got {sorted(overrides)}"
            )
        if "engine" in overrides:
            from rllib_seeupo.llm.module import checked_engine

            checked_engine(model_config["engine"])
        return
    from rllib_seeupo.llm.module import DEFAULTS, checked_settings

    unknown = sorted(overrides - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown --model-config key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    checked_settings(dict(model_config or {}))  # every value, before a model loads
    if "model" in overrides:
        try:
            check_model(model_config["model"])
        except ValueError as error:
            raise ValueError(f"--model-config model: {error}") from None


def load_module(model: str, model_config: dict[str, Any] | None = None):
    """A text policy module for evaluation from ``model``: an algorithm checkpoint (its
    shared module, with the settings it was trained with), an RLModule checkpoint, or a
    model for ``LLMRLModule`` (a packaged alias, a local folder or ``hf:<hub id>``).
    ``model_config`` overrides settings (e.g. ``max_new_tokens``) in every case."""
    from pathlib import Path

    import gymnasium as gym
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_seeupo.turn_env import SHARED_MODULE_ID

    check_model_spec(model, model_config)
    overrides = dict(model_config or {})
    if "engine" in overrides:  # evaluation generates in this process: no engine actors
        from rllib_seeupo.llm.module import checked_engine

        overrides["engine"] = {**checked_engine(overrides["engine"]), "num_engines": 0, "placement": "split"}
    path = Path(model)
    if (path / "rllib_checkpoint.json").exists() and (path / "learner_group").exists():
        path = path / "learner_group" / "learner" / "rl_module" / SHARED_MODULE_ID
    if (path / "class_and_ctor_args.pkl").exists():
        module = RLModule.from_checkpoint(path.resolve())
        if overrides:
            # A restored module keeps its weights and prompt format; only how it decodes may change.
            allowed = set(CHECKPOINT_OVERRIDES)
            if not hasattr(module, "settings") or set(overrides) - allowed:
                raise ValueError(
                    f"model_config overrides for a checkpoint may only set {sorted(allowed)}, got {sorted(overrides)}"
                )
            if "engine" in overrides:
                from rllib_seeupo.llm.module import checked_engine

                overrides["engine"] = checked_engine(overrides["engine"])
                if overrides["engine"]["kind"] == "vllm":
                    from rllib_seeupo.llm.vllm_engine import check_installed

                    check_installed()
            module.settings.update(overrides)
        return _on_accelerator(module)
    from rllib_seeupo.llm.module import LLMRLModule

    space = gym.spaces.Discrete(1)  # text in, text out: the spaces are not consulted
    return _on_accelerator(LLMRLModule(
        observation_space=space, action_space=space, inference_only=True, model_config={"model": model, **overrides}
    ))


def _on_accelerator(module):
    """The module on the GPU when there is one (the transformers engine generates with the
    module's own weights; vLLM places its engine itself)."""
    import torch

    settings = getattr(module, "settings", None)
    if settings and settings["engine"]["kind"] == "transformers" and torch.cuda.is_available():
        module.to("cuda")
    return module


def markdown_table(result: dict[str, Any]) -> str:
    """One row per group (BFCL category, task level) and one for all episodes."""
    k = result["k"]
    extras = sorted(key for key in result if key.endswith("_mean") and key[: -len("_mean")] in EXTRA_METRICS)
    blind = any("blind_success" in r for r in result.get("groups", {}).values())
    header = ["group", "episodes", f"avg@{k}", *(["best blind"] if blind else []), f"pass@{k}", "mean turns",
              "parse-error rate", "truncation rate", *extras]
    rows = [(name, r) for name, r in result.get("groups", {}).items()] + [("all", result)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows:
        label = f"{result['group_by']} {name}" if name != "all" and result.get("group_by") == "level" else name
        cells = [label, str(r["num_episodes"]), f"{r['success_rate']:.3f}"]
        if blind:
            cells.append(f"{r['blind_success']:.3f}" if "blind_success" in r else "-")
        cells += [f"{r[key]:.3f}" for key in ("pass_at_k", "turns_mean", "parse_error_rate", "truncation_rate", *extras)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def progress_bar(label: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` for ``evaluate``: a tqdm bar on stderr (redrawn in place on
    a terminal; in a log, at most one update every 30 seconds), shown once the work has
    taken a second."""
    from tqdm.auto import tqdm

    bar = None
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, unit="episode", file=sys.stderr, delay=1.0,
                       mininterval=0.5 if tty else 30.0, dynamic_ncols=tty)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


# -- held-out evaluation inside the Algorithm -----------------------------------------------
#
# RLlib's evaluation config carries it: `evaluation_interval` (every N training iterations),
# `evaluation_duration` (the number of test tasks: the first N of the split, the same tasks
# at every evaluation) and `custom_evaluation_function`, a `HeldOutEvaluation` holding the
# split, k, the batch size and whether to measure the untrained policy too. The figures of
# `result_metrics` land under `evaluation/` in the training results of the evaluated
# iterations (RLlib's MetricsLogger also repeats them in the next result: it reduces them
# once more); `evaluation/at_env_steps` says when they were measured (the training env steps
# sampled by then). The measurement before training is in the first result, under
# `evaluation_before/`.

EVALUATION_BEFORE = "evaluation_before"
MEASURED_AT = "at_env_steps"


def result_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """``evaluate``'s figures as a nested dict of numbers for the training results: the
    overall ones, and per group under the group's key (``level/1/success_rate``,
    ``category/multi_turn_base/pass_at_k``)."""
    metrics: dict[str, Any] = {key: float(value) for key, value in result.items() if _is_number(value)}
    if result.get("groups"):
        metrics[result["group_by"]] = {str(name): result_metrics(group) for name, group in result["groups"].items()}
    return metrics


def figures_from_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``result_metrics`` (``evaluate``'s shape: ``groups`` and ``group_by``,
    ``markdown_table`` reads it) from the ``evaluation`` entry of a training result."""
    figures: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            if key in GROUP_KEYS and "groups" not in figures:
                figures["group_by"] = key
                order = sorted(value, key=lambda name: (not str(name).isdigit(), int(name) if str(name).isdigit() else 0, str(name)))
                figures["groups"] = {str(name): figures_from_metrics(value[name]) for name in order}
            continue
        if _is_number(value):
            figures[key] = int(value) if key in ("k", "num_episodes", "num_tasks") else float(value)
    return figures


class HeldOutEvaluation:
    """RLlib's ``custom_evaluation_function`` (new API stack): plays the first
    ``config.evaluation_duration`` tasks of the env's ``split`` ``k`` times each with the
    algorithm's current module (``algo.get_module``: the env runner's copy, whose weights
    RLlib syncs from the learner right before calling this), every live episode in one
    generation batch of up to ``batch_size``; greedy for ``k=1`` unless ``sample``.

    The env is ``config.env`` (a ``seeupo/<name>`` env) with the evaluation config's
    ``env_config`` (``config.evaluation(evaluation_config={"env_config": ...})`` overrides
    the training one). The figures go into the algorithm's MetricsLogger under
    ``evaluation`` (``result_metrics``; RLlib's ``evaluate()`` returns what is logged
    there), with ``at_env_steps``. With ``config.seed`` a sampled evaluation draws the same
    random numbers at every evaluation. ``before``: ``measure_before_training`` (an
    ``on_algorithm_init`` callback) measures the policy once when the algorithm is built.
    ``at_stop``: a stop budget (Tune's ``stop`` dict, e.g. ``{"env_steps": 600}``);
    ``evaluate_at_stop`` (an ``on_train_result`` callback) measures the policy in the result
    that reaches it, unless that iteration was evaluated already: a Tune trial and an
    in-process run both end with the figures of the trained policy.
    Use ``held_out_evaluation`` to set all of it on a config."""

    def __init__(self, *, split: str = "test", k: int = 1, batch_size: int = 64, sample: bool = False,
                 before: bool = True, progress: bool = True, at_stop: dict[str, Any] | None = None):
        for name, value in (("k", k), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HeldOutEvaluation: {name} must be an integer >= 1, got {value!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"HeldOutEvaluation: split must be a split name, got {split!r}")
        self.split, self.k, self.batch_size = split, k, batch_size
        self.sample, self.before, self.progress = bool(sample), bool(before), bool(progress)
        self.at_stop = dict(at_stop) if at_stop else None

    def __repr__(self) -> str:
        return (f"HeldOutEvaluation(split={self.split!r}, k={self.k}, batch_size={self.batch_size}, "
                f"sample={self.sample}, before={self.before}, at_stop={self.at_stop})")

    def __call__(self, algorithm, eval_env_runner_group=None) -> tuple[dict[str, Any], int, int]:
        metrics, steps = self.measure(algorithm, "held-out eval")
        log_evaluation(algorithm, metrics)
        return metrics, steps, steps

    def env(self, algorithm) -> tuple[str, dict[str, Any]]:
        """The env package name and the settings evaluation plays it with."""
        config = getattr(algorithm, "evaluation_config", None) or algorithm.config
        env = config.env if isinstance(config.env, str) else ""
        if not env.startswith("seeupo/"):
            raise ValueError(f"held-out evaluation plays a 'seeupo/<name>' env's {self.split!r} split, got env {config.env!r}")
        return env.removeprefix("seeupo/"), dict(config.env_config or {})

    def task_ids(self, algorithm) -> list:
        """The first ``evaluation_duration`` tasks of the split: the same at every evaluation."""
        num_tasks = algorithm.config.evaluation_duration
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"held-out evaluation: evaluation_duration is the number of test tasks, got {num_tasks!r}")
        name, env_config = self.env(algorithm)
        return list(make_turn_env(name, env_config).task_ids(self.split)[:num_tasks])

    def measure(self, algorithm, label: str) -> tuple[dict[str, Any], int]:
        """Plays the tasks; returns ``result_metrics`` (with ``at_env_steps``, ``num_tasks``
        and ``env_runners/num_episodes|num_env_steps_sampled``) and the env steps played."""
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

        from rllib_seeupo.turn_env import SHARED_MODULE_ID

        name, env_config = self.env(algorithm)
        task_ids = self.task_ids(algorithm)
        module = algorithm.get_module(SHARED_MODULE_ID) or algorithm.get_module()
        if getattr(module, "engine_client", False):  # evaluation generates on the run's engine actors
            module.attach_engine(algorithm.rollout_engines()[0], algorithm.engine_weights_version)
        sample = self.sample or self.k > 1
        if sample and algorithm.config.seed is not None and hasattr(module, "seed_sampling"):
            module.seed_sampling(int(np.random.SeedSequence([int(algorithm.config.seed), 2]).generate_state(1)[0]))
        result = evaluate(
            module_policy(module), name, env_config, task_ids, k=self.k, sample=sample, batch_size=self.batch_size,
            progress=progress_bar(f"   {label}") if self.progress else None,
        )
        steps = int(round(result["turns_mean"] * result["num_episodes"]))
        metrics = result_metrics(result)
        metrics["num_tasks"] = float(len(task_ids))
        metrics[MEASURED_AT] = float(algorithm.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))
        # RLlib's own evaluation counts (and `evaluate()` looks for) these.
        metrics["env_runners"] = {"num_episodes": float(result["num_episodes"]), "num_env_steps_sampled": float(steps)}
        return metrics, steps


def log_evaluation(algorithm, metrics: dict[str, Any], key: str | None = None) -> None:
    """Aggregates ``metrics`` into the algorithm's MetricsLogger under ``key`` (default:
    RLlib's ``evaluation``), as RLlib does with its evaluation env runners' metrics."""
    from ray.rllib.utils.metrics import EVALUATION_RESULTS
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    logger = MetricsLogger()
    logger.log_dict(metrics, reduce="mean", window=1)
    algorithm.metrics.aggregate([logger.reduce()], key=key or EVALUATION_RESULTS)


def measure_before_training(*, algorithm, metrics_logger=None, **kwargs) -> None:
    """``on_algorithm_init``: with a ``HeldOutEvaluation(before=True)``, measures the
    untrained policy once; its figures are in the first training result under
    ``evaluation_before/``. (An algorithm restored from a checkpoint is built first, so it
    measures too; the restore then brings back the checkpoint's figures.)"""
    evaluation = algorithm.config.custom_evaluation_function
    if isinstance(evaluation, HeldOutEvaluation) and evaluation.before:
        metrics, _ = evaluation.measure(algorithm, "held-out eval before training")
        log_evaluation(algorithm, metrics, EVALUATION_BEFORE)


def evaluate_at_stop(*, algorithm, result, metrics_logger=None, **kwargs) -> None:
    """``on_train_result``: with a ``HeldOutEvaluation(at_stop=...)``, measures the policy in
    the result that reaches the stop budget (its last), unless this iteration was measured."""
    from rllib_seeupo.reporting import iteration_record, measured_evaluation, should_stop

    evaluation = algorithm.config.custom_evaluation_function
    if not isinstance(evaluation, HeldOutEvaluation) or not evaluation.at_stop:
        return
    record = iteration_record(result)
    if not should_stop(record, result, evaluation.at_stop):
        return
    if measured_evaluation(result) is not None:
        return  # evaluated in this iteration (its interval)
    result["evaluation"] = algorithm.evaluate()


def held_out_evaluation(
    config,
    *,
    num_tasks: int = 100,
    interval: int | None = 1,
    split: str = "test",
    k: int = 1,
    batch_size: int = 64,
    sample: bool = False,
    before: bool = True,
    progress: bool = True,
    at_stop: dict[str, Any] | None = None,
):
    """Sets held-out evaluation on any new-stack ``AlgorithmConfig`` of a ``seeupo/<name>``
    env (``SeeUPOConfig``, the presets, ``ppo_config``'s ``PPOConfig``); returns ``config``.

    .. code-block:: python

        config = held_out_evaluation(SeeUPOConfig().environment("seeupo/tool_tasks"), num_tasks=100, interval=4)
        algo = config.build_algo()
        algo.train()["evaluation"]["success_rate"]  # in the 4th, 8th, ... results
        algo.evaluate()["success_rate"]             # at any time

    Args:
        num_tasks: ``evaluation_duration``: the first ``num_tasks`` tasks of ``split``.
        interval: ``evaluation_interval``: evaluate after every ``interval``-th training
            iteration; None: only through ``algo.evaluate()``.
        split, k, batch_size, sample, before, progress, at_stop: see ``HeldOutEvaluation``.

    The evaluation config's own ``evaluation_interval`` is set to None so that RLlib builds
    no evaluation env runners (each would hold one more copy of the model): RLlib then
    syncs the learner's weights to the training env runner and the function plays the test
    tasks with that runner's module, in the algorithm's process."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    evaluation = HeldOutEvaluation(split=split, k=k, batch_size=batch_size, sample=sample, before=before, progress=progress,
                                   at_stop=at_stop)
    overrides = config.evaluation_config
    if isinstance(overrides, AlgorithmConfig):
        raise ValueError("held_out_evaluation needs evaluation_config as a dict of overrides, not an AlgorithmConfig")
    overrides = {**dict(overrides or {}), "evaluation_interval": None}
    config.evaluation(
        evaluation_interval=interval,
        evaluation_duration=num_tasks,
        evaluation_duration_unit="episodes",
        custom_evaluation_function=evaluation,
        evaluation_config=overrides,
    )
    config.callbacks(on_algorithm_init=_with_hook(config.callbacks_on_algorithm_init, measure_before_training),
                     on_train_result=_with_hook(config.callbacks_on_train_result, evaluate_at_stop))
    return config


def _with_hook(current, hook):
    """A config's callback setting (None, one function or a list) with ``hook`` added once."""
    hooks = [h for h in (current if isinstance(current, (list, tuple)) else [current]) if h is not None]
    if hook not in hooks:
        hooks.append(hook)
    return hooks[0] if len(hooks) == 1 else hooks
