"""Rollouts for SeeUPO: each task's ``group_size`` episodes on the env runners, the
iteration's seeds, and finished episodes turned into ``Rollout`` records
(docs/design.md section 3.1)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import random
import time
from typing import Any, Hashable

import numpy as np
import ray
import torch
from ray.rllib.core.columns import Columns

from rllib_seeupo.llm.engine_actor import StaleEngineError
from rllib_seeupo.turn_env import TurnAgentEnv, final_info, turn_index

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Rollout:
    """One finished episode: its task, its reward and the data of each turn it played."""

    episode_id: str
    task_id: Hashable
    reward: float
    turns: dict[int, dict[str, Any]]  # turn index -> that turn's obs, action, model outputs
    info: dict[str, Any]  # the env's final infos (e.g. success, parse_errors)
    truncated: bool


# -- seeding: a run resumed from its checkpoint draws the random numbers the uninterrupted
# run would have drawn. RLlib seeds the global RNGs once, when an env runner or learner is
# built, so a restored run would replay the noise of its first iterations. Instead, each
# iteration's sampling and learning noise is seeded from (config.seed, iteration, stream,
# runner / learner index); nothing about an RNG's state needs to be checkpointed.
SAMPLING_STREAM, LEARNING_STREAM = 0, 1


def iteration_seeds(seed_key: tuple[int, int], stream: int, index: int, n: int = 1) -> list[int]:
    """``n`` independent 32-bit seeds for ``stream`` of process ``index`` in the iteration
    ``seed_key = (config.seed, iteration)``."""
    state = np.random.SeedSequence([*seed_key, stream, index]).generate_state(n)
    return [int(x) for x in state]


def seed_globals(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CUDA ones included), as RLlib's
    ``update_global_seed_if_necessary`` does, but without switching torch to deterministic
    algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_learner(learner, seed_key: tuple[int, int]) -> None:
    """Seed a learner's globals for this iteration's updates: numpy's shuffles the
    minibatches (``shuffle_batch_per_epoch`` with several epochs), torch's draws dropout."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    seed_globals(iteration_seeds(seed_key, LEARNING_STREAM, rank)[0])


# -- sampling ------------------------------------------------------------------------------


def turn_envs(env_runner) -> list[TurnAgentEnv]:
    """The turn-as-agent envs of an env runner's vector env."""
    subs = []
    for env in getattr(env_runner.env, "envs", []):
        while not isinstance(env, TurnAgentEnv) and hasattr(env, "env"):
            env = env.env
        if isinstance(env, TurnAgentEnv):
            subs.append(env)
    if not subs:
        raise TypeError(
            "SeeUPO needs a turn-as-agent env (one registered with rllib_seeupo.register_turn_env, "
            f"or a rllib_seeupo.turn_env.TurnAgentEnv); got {type(env_runner.env).__name__}"
        )
    return subs


def runner_task_ids(env_runner, split: str = "train"):
    return turn_envs(env_runner)[0].task_ids(split)


def sample_scheduled(env_runner, schedules: dict[int, list], seed_key: tuple[int, ...] | None = None,
                     engines: list | None = None, engine_version: int | None = None):
    """Sample one complete episode per entry of this runner's task schedule; with a
    ``seed_key`` ((config.seed, iteration), plus the attempt for a retry), from generators
    seeded for this iteration and runner; with ``engines`` (engine actors' handles), through
    engine ``(worker_index - 1) mod len(engines)``, which must hold ``engine_version``.
    Returns ``(worker_index, episodes, metrics)``."""
    schedule = schedules.get(env_runner.worker_index, [])
    if not schedule:
        return env_runner.worker_index, [], env_runner.get_metrics()
    if engines:
        attach_engine(env_runner, engines, engine_version)
    if seed_key is not None:
        global_seed, module_seed = iteration_seeds(seed_key, SAMPLING_STREAM, env_runner.worker_index, 2)
        # RLlib samples actions from torch's global generator (the tabular module's
        # distribution); modules that sample themselves take an explicit generator.
        seed_globals(global_seed)
        for module in env_runner.module.values():
            if hasattr(module, "seed_sampling"):
                module.seed_sampling(module_seed)
    queue = collections.deque(schedule)
    for sub_env in turn_envs(env_runner):
        sub_env.task_queue = queue
    try:
        episodes = env_runner.sample(num_episodes=len(schedule), explore=True)
    except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError, StaleEngineError) as error:
        if not engines:
            raise
        # Its engine actor died (or came back from a restart without the current weights).
        # Raised, the error would make RLlib restart this healthy runner (after
        # `delay_between_env_runner_restarts_s`); answered with None, its groups are sampled
        # again once the engine is back with the weights (the next sample resets every env).
        logger.warning("env runner %d: its engine actor was lost while sampling (%s); its task groups are "
                       "sampled again", env_runner.worker_index, type(error).__name__)
        return env_runner.worker_index, None, env_runner.get_metrics()
    log_weight_syncs(env_runner)
    return env_runner.worker_index, episodes, env_runner.get_metrics()


def attach_engine(env_runner, engines: list, version: int | None = None) -> None:
    """Point the runner's engine-client modules at its engine actor, which must hold weights
    ``version`` (a restarted runner is a new process: it gets its engine with every sampling
    call)."""
    engine = engines[max(env_runner.worker_index - 1, 0) % len(engines)]
    for module in env_runner.module.values():
        if getattr(module, "engine_client", False):
            module.attach_engine(engine, version)


def log_weight_syncs(env_runner) -> None:
    """This iteration's weight syncs into a rollout engine (vLLM's: ``LLMRLModule``'s
    ``pop_weight_sync_stats``) as ``env_runners/weight_sync/{count,bytes,seconds}``."""
    for module in env_runner.module.values():
        for sync in getattr(module, "pop_weight_sync_stats", list)():
            for key, value in (("count", 1), ("bytes", sync["bytes"]), ("seconds", sync["seconds"])):
                env_runner.metrics.log_value(("weight_sync", key), value, reduce="sum")


# Rounds of sampling in one iteration: the first, then retries of the task groups whose env
# runner was lost (its process died), on the runners still healthy or restarted.
MAX_SAMPLING_ROUNDS = 4


def sample_task_groups(env_runner_group, tasks: list, group_size: int, seed_key: tuple[int, int] | None, local: bool,
                       restore=None, restore_timeout_s: float = 1800.0, engines=None):
    """Roll out each of ``tasks`` ``group_size`` times, the tasks dealt round-robin over the
    healthy env runners (the local one when ``local``).

    A remote env runner that fails while sampling (with RLlib's ``restart_failed_env_runners``,
    the default, its error is logged, not raised) returns nothing: its tasks' groups are
    sampled again, whole, with seeds of their own, on the runners still healthy, so the
    iteration still gets every group. Only when none is left does it wait, up to
    ``restore_timeout_s``, for restarted ones (``restore()``: the algorithm's
    ``restore_env_runners``, which also gives them the current weights; RLlib calls it at the
    start of every iteration as well). A runner that fails ``MAX_SAMPLING_ROUNDS`` rounds in a
    row (an error in the env, not a lost process) ends the iteration with an error; RLlib has
    logged each failure's traceback.

    With engine actors, ``engines()`` returns their handles and the weights version they
    hold before each round, every engine alive and up to date (``SeeUPO.rollout_engines``): a
    runner whose engine died (or came back without that version) answers with nothing, and
    its groups are sampled again once Ray has restarted the engine.

    Returns the finished episodes, each runner's metrics and the number of task groups that
    were sampled again."""
    pending, episodes, metrics, retried = list(tasks), [], [], 0
    for attempt in range(MAX_SAMPLING_ROUNDS):
        workers = [0] if local else env_runner_group.healthy_worker_ids()
        deadline = time.monotonic() + restore_timeout_s
        while not workers and restore is not None and time.monotonic() < deadline:
            restore()  # probes the restarting runners (each probe waits for them a while)
            workers = env_runner_group.healthy_worker_ids()
            if not workers:
                time.sleep(1.0)
        if not workers:
            raise RuntimeError(f"sampling lost {len(pending)} task group(s): no env runner is healthy "
                               f"{restore_timeout_s:.0f} s after the failure (restart_failed_env_runners restarts them)")
        schedules = {w: [t for t in pending[j :: len(workers)] for _ in range(group_size)] for j, w in enumerate(workers)}
        key = seed_key if seed_key is None or not attempt else (*seed_key, attempt)
        handles, version = engines() if engines is not None else (None, None)
        results = env_runner_group.foreach_env_runner(
            functools.partial(sample_scheduled, schedules=schedules, seed_key=key, engines=handles, engine_version=version),
            local_env_runner=local,
            remote_worker_ids=None if local else workers,
        )
        answered = set()
        for worker, eps, runner_metrics in results:
            if eps is None:  # its engine actor was lost
                continue
            answered.add(worker)
            episodes += eps
            metrics.append(runner_metrics)
        pending = [t for j, w in enumerate(workers) if w not in answered for t in pending[j :: len(workers)]]
        if not pending:
            return episodes, metrics, retried
        retried += len(pending)
    raise RuntimeError(
        f"sampling failed for {len(pending)} task group(s) in {MAX_SAMPLING_ROUNDS} rounds in a row; the env "
        "runners' (or their engine actors') errors are logged above"
    )


# -- episodes to rollouts ------------------------------------------------------------------


def to_rollout(episode) -> Rollout | None:
    """A finished multi-agent episode as a ``Rollout`` (None if no turn acted)."""
    turns, returns, task_id = {}, [], None
    for agent_id, agent_episode in episode.agent_episodes.items():
        if len(agent_episode) == 0:
            continue
        k = turn_index(agent_id)
        row = {
            Columns.OBS: agent_episode.get_observations(0),
            Columns.ACTIONS: agent_episode.get_actions(0),
        }
        for key in agent_episode.extra_model_outputs.keys():
            row[key] = agent_episode.get_extra_model_outputs(key, 0)
        turns[k] = row
        returns.append(float(np.sum(agent_episode.get_rewards())))
        task_id = agent_episode.get_infos(0).get("task_id", task_id)
    if not turns:
        return None
    info = final_info(episode)
    # Every turn shares the rollout's reward; the mean keeps a per-turn penalty counted once.
    return Rollout(episode.id_, task_id, float(np.mean(returns)), turns, info, bool(episode.is_truncated))


def rollout_stats(rollouts: list[Rollout]) -> dict[str, float]:
    """Per-iteration figures of the sampled episodes (reward, success, turns, tokens)."""
    if not rollouts:
        return {"num_rollouts": 0}
    stats = {
        "num_rollouts": len(rollouts),
        "reward_mean": float(np.mean([r.reward for r in rollouts])),
        "turns_mean": float(np.mean([len(r.turns) for r in rollouts])),
        "truncated_rate": float(np.mean([r.truncated for r in rollouts])),
    }
    if any("success" in r.info for r in rollouts):
        stats["success_rate"] = float(np.mean([float(r.info.get("success", 0.0)) for r in rollouts]))
    if any("parse_errors" in r.info for r in rollouts):
        stats["parse_error_rate"] = sum(r.info.get("parse_errors", 0) for r in rollouts) / sum(len(r.turns) for r in rollouts)
    tokens = [len(t["response_ids"]) for r in rollouts for t in r.turns.values() if "response_ids" in t]
    if tokens:
        stats["response_tokens"] = float(sum(tokens))
    return stats


def observation_key(value: Any) -> Hashable:
    """An observation as a dict key (text, a number or an array of them): GiGPO's anchor
    states are rows whose observations are equal."""
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(observation_key(v) for v in value)
    return value
