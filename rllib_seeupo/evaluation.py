"""Held-out evaluation: run a turn policy over an env's test tasks, many episodes at once."""

from __future__ import annotations

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
    ``groups`` (keyed by the group's value as text, with ``group_by`` naming the key).
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


# What ``model_config`` may change on a restored checkpoint: how it decodes, not its
# weights or prompt format.
CHECKPOINT_OVERRIDES = ("max_prompt_tokens", "max_new_tokens", "temperature", "top_p", "stop_strings")


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
        return
    from rllib_seeupo.llm.module import DEFAULTS

    unknown = sorted(overrides - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown --model-config key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
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
            module.settings.update(overrides)
        return module
    from rllib_seeupo.llm.module import LLMRLModule

    space = gym.spaces.Discrete(1)  # text in, text out: the spaces are not consulted
    return LLMRLModule(
        observation_space=space, action_space=space, inference_only=True, model_config={"model": model, **overrides}
    )


def markdown_table(result: dict[str, Any]) -> str:
    """One row per group (BFCL category, task level) and one for all episodes."""
    k = result["k"]
    extras = sorted(key for key in result if key.endswith("_mean") and key[: -len("_mean")] in EXTRA_METRICS)
    header = ["group", "episodes", f"avg@{k}", f"pass@{k}", "mean turns", "parse-error rate", "truncation rate", *extras]
    rows = [(name, r) for name, r in result.get("groups", {}).items()] + [("all", result)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows:
        label = f"{result['group_by']} {name}" if name != "all" and result.get("group_by") == "level" else name
        cells = [label, str(r["num_episodes"])] + [
            f"{r[key]:.3f}" for key in ("success_rate", "pass_at_k", "turns_mean", "parse_error_rate", "truncation_rate", *extras)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
