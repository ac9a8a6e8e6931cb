"""Held-out evaluation: run a turn policy over an env's test tasks, many episodes at once."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from rllib_seeupo.turn_env import make_turn_env

# policy(observations, sample) -> actions, one per observation, generated as one batch.
BatchPolicy = Callable[[list[Any], bool], list[str]]


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
    ``truncation_rate``, ``num_episodes`` and ``seconds``.
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
    by_task: dict[Any, list[float]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r["success"])
    turns = sum(r["turns"] for r in records)
    return {
        "success_rate": float(np.mean([r["success"] for r in records])) if records else 0.0,
        "pass_at_k": float(np.mean([max(v) for v in by_task.values()])) if by_task else 0.0,
        "k": k,
        "reward_mean": float(np.mean([r["reward"] for r in records])) if records else 0.0,
        "turns_mean": turns / max(len(records), 1),
        "parse_error_rate": sum(r["parse_errors"] for r in records) / max(turns, 1),
        "truncation_rate": float(np.mean([r["truncated"] for r in records])) if records else 0.0,
        "num_episodes": len(records),
        "seconds": time.time() - start,
    }
