"""The driver's calls into RLlib's ``LearnerGroup`` for SeeUPO: a minibatch as each learner's
shard, no-grad log-prob passes spread over the learners, and a call on one learner."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from rllib_seeupo.columns import RESPONSE_MASK
from rllib_seeupo.learner import ADVANTAGES
from rllib_seeupo.micro_batch_learner import MINIBATCH_ROWS
from rllib_seeupo.rollouts import seed_learner
from rllib_seeupo.turn_env import SHARED_MODULE_ID


def _multi_agent_batch(columns: dict[str, np.ndarray]) -> MultiAgentBatch:
    return MultiAgentBatch({SHARED_MODULE_ID: SampleBatch(columns)}, env_steps=len(columns[ADVANTAGES]))


def learner_batches(learner_group, minibatch: dict[str, np.ndarray]) -> dict[str, Any]:
    """``learner_group.update``'s data argument for one minibatch (one optimizer step).

    Every row carries the minibatch's number of rows with a response (the learners weigh
    their losses by it). With several learners the rows are split into shards whose sizes
    differ by at most one, and a learner whose shard would be empty gets one row without a
    response, which adds nothing to the gradient: each learner runs its forward and
    backward, so their gradient all-reduce never waits on one."""
    minibatch[MINIBATCH_ROWS] = np.full(len(minibatch[ADVANTAGES]), int(minibatch[RESPONSE_MASK].any(-1).sum()))
    if learner_group.is_local:
        return {"batch": _multi_agent_batch(minibatch)}
    shards = []
    for rows in np.array_split(np.arange(len(minibatch[ADVANTAGES])), len(learner_group)):
        if len(rows):
            shards.append({k: v[rows] for k, v in minibatch.items()})
        else:
            empty = {k: v[:1].copy() for k, v in minibatch.items()}
            empty[RESPONSE_MASK][:] = False
            shards.append(empty)
    return {"batches": [_multi_agent_batch(shard) for shard in shards]}


def learner_call(learner_group, func):
    """``func(learner)`` on one learner (all hold the same weights)."""
    ids = None if learner_group.is_local else learner_group._worker_manager.healthy_actor_ids()[:1]
    return next(iter(learner_group.foreach_learner(func, remote_actor_ids=ids))).get()


def seed_learners(learner_group, seed_key: tuple[int, int]) -> None:
    """Seed every learner's noise for this iteration (``rollouts.seed_learner``)."""
    learner_group.foreach_learner(functools.partial(seed_learner, seed_key=seed_key))


def _response_logp_shard(learner, columns: dict[str, np.ndarray]) -> tuple[int, np.ndarray | None]:
    """This learner's share of a no-grad log-prob pass: ``(rank, (B_rank, L) log-probs)``
    of its rows (the rows split as ``np.array_split`` over the ranks; None if it has none)."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    rows = np.array_split(np.arange(len(columns[RESPONSE_MASK])), world)[rank]
    if not len(rows):
        return rank, None
    return rank, learner.compute_response_logp(SHARED_MODULE_ID, {k: v[rows] for k, v in columns.items()})


def response_logp(learner_group, columns: dict[str, np.ndarray]) -> np.ndarray:
    """``(B, L)`` log-probs of the rows' responses under the learners' current weights, the
    rows spread over the learners."""
    if learner_group.is_local or len(learner_group) == 1:
        return learner_call(learner_group, lambda learner: learner.compute_response_logp(SHARED_MODULE_ID, columns))
    results = learner_group.foreach_learner(functools.partial(_response_logp_shard, columns=columns))
    shards = sorted(r.get() for r in results)
    return np.concatenate([logp for _, logp in shards if logp is not None])


# Result key: the optimizer steps taken so far (SeeUPO and, through a callback, RLlib's PPO).
OPTIMIZER_STEPS = "optimizer_steps"


def _optimizer_steps(learner) -> int | None:
    """The shared module's optimizer steps: the largest per-parameter step count in its
    optimizers' state (Adam's ``step``, which every parameter with a gradient moves on at
    each step; None before the first step and for an optimizer that keeps none)."""
    steps = [int(state["step"]) for _, optimizer in learner.get_optimizers_for_module(SHARED_MODULE_ID)
             for state in optimizer.state.values() if "step" in state]
    return max(steps) if steps else None


def optimizer_steps(learner_group) -> int | None:
    """How many optimizer steps the learners have taken so far (they step together), read
    from the optimizer's state, so it counts the same way for SeeUPO's turn updates and
    RLlib's PPO epochs; None for an optimizer without a step count (plain SGD)."""
    return learner_call(learner_group, _optimizer_steps)
