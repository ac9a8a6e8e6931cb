"""``SeeUPO``: the training loop. Sample task groups, compute GRAE advantages, then update
the turns one after another (reverse order by default), carrying HAPPO's compound factor
M between them (by default its shared-weight form: the joint ratio of the turns already
updated against the rollout policy), and finally sync the new weights to the env runners."""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from typing import Any, Hashable

import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from rllib_seeupo import objectives
from rllib_seeupo.config import SeeUPOConfig
from rllib_seeupo.learner import ADVANTAGES, COMPOUND_FACTOR, MINIBATCH_ROWS, OLD_LOGP, TURN, turn_metrics_key
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK
from rllib_seeupo.objectives import CompoundRatio, UpdateOrder
from rllib_seeupo.turn_env import SHARED_MODULE_ID, TurnAgentEnv, final_info, turn_index

ROLLOUTS = "rollouts"  # metrics key of the rollout/grouping statistics
TURN_ADVANTAGE = "turn_advantage"  # GiGPO: a turn row's own advantage, kept in Rollout.turns[k]
# Phases of `update_policy` timed on the algorithm side (seconds, summed over the turns).
UPDATE_PHASES = ("collate", "logp_recompute", "learner_update", "metrics", "compound_update")


@dataclasses.dataclass
class Rollout:
    """One finished episode: its task, its reward and the data of each turn it played."""

    episode_id: str
    task_id: Hashable
    reward: float
    turns: dict[int, dict[str, Any]]  # turn index -> that turn's obs, action, model outputs
    info: dict[str, Any]  # the env's final infos (e.g. success, parse_errors)
    truncated: bool


def _turn_envs(env_runner) -> list[TurnAgentEnv]:
    subs = []
    for env in getattr(env_runner.env, "envs", []):
        while not isinstance(env, TurnAgentEnv) and hasattr(env, "env"):
            env = env.env
        if isinstance(env, TurnAgentEnv):
            subs.append(env)
    if not subs:
        raise TypeError(
            "SeeUPO needs a turn-as-agent env (a registered 'seeupo/<name>' env or a "
            f"rllib_seeupo.turn_env.TurnAgentEnv); got {type(env_runner.env).__name__}"
        )
    return subs


def _runner_task_ids(env_runner, split: str = "train"):
    return _turn_envs(env_runner)[0].task_ids(split)


# -- seeding: a run resumed from its checkpoint draws the random numbers the uninterrupted
# run would have drawn. RLlib seeds the global RNGs once, when an env runner or learner is
# built, so a restored run would replay the noise of its first iterations. Instead, each
# iteration's sampling and learning noise is seeded from (config.seed, iteration, stream,
# runner / learner index); nothing about an RNG's state needs to be checkpointed.
SAMPLING_STREAM, LEARNING_STREAM = 0, 1


def _iteration_seeds(seed_key: tuple[int, int], stream: int, index: int, n: int = 1) -> list[int]:
    """``n`` independent 32-bit seeds for ``stream`` of process ``index`` in the iteration
    ``seed_key = (config.seed, iteration)``."""
    state = np.random.SeedSequence([*seed_key, stream, index]).generate_state(n)
    return [int(x) for x in state]


def _seed_globals(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CUDA ones included), as RLlib's
    ``update_global_seed_if_necessary`` does, but without switching torch to deterministic
    algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_learner(learner, seed_key: tuple[int, int]) -> None:
    """Seed a learner's globals for this iteration's updates: numpy's shuffles the
    minibatches (``shuffle_batch_per_epoch`` with several epochs), torch's draws dropout."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    _seed_globals(_iteration_seeds(seed_key, LEARNING_STREAM, rank)[0])


def _minibatches(num_rows: int, size: int | None, num_epochs: int, shuffle: bool, rng: np.random.Generator):
    """Row indices of each minibatch of a turn update: ``num_epochs`` passes over the rows,
    each split into minibatches of at most ``size`` rows (None: one), shuffled per pass when
    split. Unlike RLlib's cyclic iterator, no row is taken twice in a pass."""
    size = size or num_rows
    for _ in range(num_epochs):
        order = rng.permutation(num_rows) if shuffle and size < num_rows else np.arange(num_rows)
        for start in range(0, num_rows, size):
            yield order[start : start + size]


def _begin_turn_update(learner, **kwargs) -> None:
    if hasattr(learner, "begin_turn_update"):
        learner.begin_turn_update(**kwargs)


def _end_turn_update(learner) -> None:
    if hasattr(learner, "end_turn_update"):
        learner.end_turn_update()


def _turn_stopped(learner) -> bool:
    return bool(getattr(learner, "turn_stopped", False))


def _sample_scheduled(env_runner, schedules: dict[int, list], seed_key: tuple[int, int] | None = None):
    """Sample one complete episode per entry of this runner's task schedule; with a
    ``seed_key`` (config.seed, iteration), from generators seeded for this iteration and runner."""
    import collections

    schedule = schedules.get(env_runner.worker_index, [])
    if not schedule:
        return [], env_runner.get_metrics()
    if seed_key is not None:
        global_seed, module_seed = _iteration_seeds(seed_key, SAMPLING_STREAM, env_runner.worker_index, 2)
        # RLlib samples actions from torch's global generator (the tabular module's
        # distribution); modules that sample themselves take an explicit generator.
        _seed_globals(global_seed)
        for module in env_runner.module.values():
            if hasattr(module, "seed_sampling"):
                module.seed_sampling(module_seed)
    queue = collections.deque(schedule)
    for sub_env in _turn_envs(env_runner):
        sub_env.task_queue = queue
    episodes = env_runner.sample(num_episodes=len(schedule), explore=True)
    return episodes, env_runner.get_metrics()


def _multi_agent_batch(columns: dict[str, np.ndarray]) -> MultiAgentBatch:
    return MultiAgentBatch({SHARED_MODULE_ID: SampleBatch(columns)}, env_steps=len(columns[ADVANTAGES]))


def _response_logp_shard(learner, columns: dict[str, np.ndarray]) -> tuple[int, np.ndarray | None]:
    """This learner's share of a no-grad log-prob pass: ``(rank, (B_rank, L) log-probs)``
    of its rows (the rows split as ``np.array_split`` over the ranks; None if it has none)."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    rows = np.array_split(np.arange(len(columns[RESPONSE_MASK])), world)[rank]
    if not len(rows):
        return rank, None
    return rank, learner.compute_response_logp(SHARED_MODULE_ID, {k: v[rows] for k, v in columns.items()})


def _hashable(value: Any) -> Hashable:
    """An observation as a dict key (text, a number or an array of them)."""
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _to_rollout(episode) -> Rollout | None:
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


def _rollout_stats(rollouts: list[Rollout]) -> dict[str, float]:
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


class SeeUPO(Algorithm):
    """SeeUPO on RLlib's new API stack. See ``SeeUPOConfig`` for the settings."""

    @classmethod
    def get_default_config(cls) -> SeeUPOConfig:
        return SeeUPOConfig()

    def training_step(self) -> None:
        rng = np.random.default_rng([self.config.seed or 0, self.iteration])

        # 1. Sample: each of B tasks rolled out n times; group-relative advantages.
        rollouts, advantages = self.sample_rollouts(rng)
        if not rollouts:
            return

        # 2. Update the turns one after another (reverse order by default), carrying M.
        if self._seed_key is not None:  # this iteration's learner noise (see _seed_learner)
            self.learner_group.foreach_learner(functools.partial(_seed_learner, seed_key=self._seed_key))
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            self.update_policy(rollouts, advantages, rng)

        # 3. Sync the new weights to the env runners.
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=[SHARED_MODULE_ID],
                inference_only=True,
            )

    def sample_rollouts(self, rng: np.random.Generator) -> tuple[list[Rollout], np.ndarray]:
        """Roll out ``tasks_per_iteration`` tasks ``group_size`` times each.

        Returns:
            The rollouts of tasks with at least two rollouts, and their ``(N,)`` advantages.
        """
        start = time.perf_counter()
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, runner_metrics = self._sample_task_groups(rng)
            self.metrics.aggregate(runner_metrics, key=ENV_RUNNER_RESULTS)
        sampling_s = time.perf_counter() - start
        rollouts, advantages = self._group_advantages(episodes)
        tokens = self.metrics.peek((ROLLOUTS, "response_tokens"), default=0.0)
        if tokens:
            self.metrics.log_value((ROLLOUTS, "tokens_per_s"), tokens / sampling_s, window=1)
        return rollouts, advantages

    def update_policy(
        self,
        rollouts: list[Rollout],
        advantages: np.ndarray,
        rng: np.random.Generator,
        *,
        update_order: str | None = None,
    ) -> dict[str, float]:
        """Update the turns of ``rollouts`` one group after another, carrying M between them.

        Args:
            rollouts, advantages: as returned by ``sample_rollouts``.
            update_order: overrides ``config.update_order`` (benchmarks compare orders on
                one batch).
        Returns:
            Seconds per phase, summed over the turn updates, also logged under
            ``timers/update_phases``: ``collate`` (building the batches), ``logp_recompute``
            (no-grad passes for pi_old and M), the learner's ``forward`` (with the loss),
            ``backward`` and ``optimizer_step`` (clipping and step), ``learner_overhead``
            (RLlib's per-update plumbing), ``compound_update``, ``metrics``, ``other`` and
            ``total``.
        """
        config = self.config
        order = update_order or config.update_order
        start = time.perf_counter()
        timings = dict.fromkeys(UPDATE_PHASES, 0.0)
        turns = {k for r in rollouts for k in r.turns}
        if config.max_turns is not None:
            # Turns past max_turns never enter an update; count how many rows that drops.
            dropped = sum(k >= config.max_turns for r in rollouts for k in r.turns)
            self.metrics.log_value((ROLLOUTS, "dropped_turns"), dropped, window=1)
            turns = {k for k in turns if k < config.max_turns}
        schedule = objectives.update_schedule(order, turns, rng)
        compound_ratio = CompoundRatio.NONE if order == UpdateOrder.PARALLEL else CompoundRatio(config.compound_ratio)
        compound = {r.episode_id: 1.0 for r in rollouts}  # M, keyed by episode id
        updated = []  # the columns of the turns updated so far (cumulative M)
        for position, group in enumerate(schedule):
            last = position + 1 == len(schedule)
            if compound_ratio == CompoundRatio.CUMULATIVE and updated:
                self._cumulative_compound(updated, compound, timings)
            columns = self._update_turns(
                group, rollouts, advantages, compound, rng,
                carry_m=compound_ratio == CompoundRatio.STEPWISE and not last, timings=timings,
            )
            if compound_ratio == CompoundRatio.CUMULATIVE and not last:
                updated.append(columns)
        # Split the learner's share into its forward, backward and optimizer step.
        inside = self._learner_call(lambda learner: getattr(learner, "pop_phase_seconds", dict)())
        timings["learner_overhead"] = timings.pop("learner_update") - inside.get("update_step", 0.0)
        timings["backward"] = inside.get("backward", 0.0)
        timings["optimizer_step"] = inside.get("optimizer_step", 0.0)
        timings["forward"] = inside.get("update_step", 0.0) - timings["backward"] - timings["optimizer_step"]
        timings["total"] = time.perf_counter() - start
        timings["other"] = timings["total"] - sum(v for k, v in timings.items() if k not in ("total", "other"))
        self.metrics.log_dict(timings, key=(TIMERS, "update_phases"), window=1)
        return timings

    def _update_turns(
        self,
        turns: list[int],
        rollouts: list[Rollout],
        advantages: np.ndarray,
        compound: dict[str, float],
        rng: np.random.Generator,
        *,
        carry_m: bool,
        timings: dict[str, float],
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """One turn update on the rows of ``turns`` (a single turn, or all of them for a
        parallel update): ``num_epochs_per_turn`` passes, each split into shuffled
        minibatches of at most ``minibatch_size`` rows (every row once per pass), one
        optimizer step each; then, if ``carry_m``, fold this update's ratio change into M.
        Adds the seconds of each phase to ``timings``; returns the rows' columns and episode
        ids (for the cumulative M)."""
        config = self.config
        clock = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[phase] += now - clock
            clock = now

        rows = [(i, k) for k in turns for i, r in enumerate(rollouts) if k in r.turns]
        if config.shuffle_batch_per_epoch:  # minibatches mix turns (parallel) and tasks
            rows = [rows[j] for j in rng.permutation(len(rows))]
        columns = self._module_class.collate_turn_rows([rollouts[i].turns[k] for i, k in rows])
        index = np.array([i for i, _ in rows])
        episode_ids = [rollouts[i].episode_id for i in index]
        key = turn_metrics_key(np.array([k for _, k in rows]))
        lap("collate")
        row_advantages = advantages[index]
        if config.step_advantage_weight:  # GiGPO: each row's own advantage
            row_advantages = np.array([rollouts[i].turns[k][TURN_ADVANTAGE] for i, k in rows], dtype=np.float32)
        no_signal = not np.any(row_advantages) and config.kl_coeff == 0 and config.entropy_coeff == 0
        if config.skip_zero_advantage_updates and no_signal:
            # No signal: no step at all (Adam's carried moments would still move the weights).
            # With a KL or entropy term the loss still has a gradient, so the step is taken.
            self.metrics.log_value((LEARNER_RESULTS, SHARED_MODULE_ID, key, "skipped"), 1.0, window=1)
            return columns, episode_ids
        # With one full-batch step on a local learner, pi_old (the current weights) is what
        # the update's own forward pass computes: no separate recompute is needed.
        single_step = config.num_epochs_per_turn == 1 and config.minibatch_size is None and self.learner_group.is_local
        before = None
        if not single_step and (config.old_policy == "current" or carry_m):
            before = self.response_logp(columns)
            lap("logp_recompute")
        old = columns[BEHAVIOUR_LOGP] if config.old_policy == "rollout" else before
        if old is not None:
            columns[OLD_LOGP] = old
        m = np.array([compound[e] for e in episode_ids], dtype=np.float32)
        columns[ADVANTAGES] = row_advantages
        columns[COMPOUND_FACTOR] = m
        columns[TURN] = np.array([k for _, k in rows], dtype=np.int64)
        lap("collate")
        self.learner_group.foreach_learner(functools.partial(
            _begin_turn_update, turn_key=key, optimizer_state=config.turn_optimizer_state, target_kl=config.turn_target_kl,
        ))
        for part in _minibatches(len(rows), config.minibatch_size, config.num_epochs_per_turn, config.shuffle_batch_per_epoch, rng):
            results = self.learner_group.update(
                **self._learner_batches({k: v[part] for k, v in columns.items()}),
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
                },
                num_epochs=1,
                minibatch_size=None,
            )
            lap("learner_update")
            # Aggregated once per minibatch: the per-turn figures are their means.
            self.metrics.aggregate(results, key=LEARNER_RESULTS)
            lap("metrics")
            if config.turn_target_kl is not None and self._learner_call(_turn_stopped):
                break
        self.learner_group.foreach_learner(_end_turn_update)
        self.metrics.log_dict(
            {"compound_factor_mean": float(m.mean()), "compound_factor_min": float(m.min()),
             "compound_factor_max": float(m.max())},
            key=(LEARNER_RESULTS, SHARED_MODULE_ID, key),
            window=1,
        )
        lap("metrics")
        if carry_m:
            if before is None:
                before = self._learner_call(lambda learner: learner.pre_step_response_logp())
            lap("compound_update")
            after = self.response_logp(columns)
            lap("logp_recompute")
            log_rho = objectives.sequence_log_ratio(
                torch.tensor(after), torch.tensor(before), torch.tensor(columns[RESPONSE_MASK])
            )
            new_m = objectives.update_compound_factor(torch.tensor(m), torch.exp(log_rho), config.compound_clip)
            for episode_id, value in zip(episode_ids, new_m.tolist()):
                compound[episode_id] = value
            lap("compound_update")
        return columns, episode_ids

    def _cumulative_compound(self, updated: list[tuple[dict[str, np.ndarray], list[str]]], compound: dict[str, float],
                             timings: dict[str, float]) -> None:
        """M of every rollout as the joint ratio of its turns updated so far (``updated``:
        their columns and episode ids), current weights against the rollout policy."""
        start = time.perf_counter()
        log_sum = dict.fromkeys(compound, 0.0)
        for columns, episode_ids in updated:
            now = self.response_logp(columns)
            log_s = objectives.sequence_log_ratio(
                torch.tensor(now), torch.tensor(columns[BEHAVIOUR_LOGP]), torch.tensor(columns[RESPONSE_MASK])
            )
            for episode_id, value in zip(episode_ids, log_s.tolist()):
                log_sum[episode_id] += value
        factors = objectives.cumulative_compound_factor(torch.tensor(list(log_sum.values()), dtype=torch.float64), self.config.compound_clip)
        compound.update(zip(log_sum, factors.tolist()))
        timings["compound_update"] += time.perf_counter() - start

    # -- plumbing -------------------------------------------------------------------------

    @property
    def _seed_key(self) -> tuple[int, int] | None:
        """``(config.seed, iteration)``, which seeds this iteration's sampling and learner
        noise; None (nothing seeded) without ``config.seed``."""
        return None if self.config.seed is None else (int(self.config.seed), int(self.iteration))

    @functools.cached_property
    def _module_class(self):
        return self.config.rl_module_spec.module_class

    @functools.cached_property
    def _train_task_ids(self):
        local = self.config.num_env_runners == 0
        ids = None if local else self.env_runner_group.healthy_worker_ids()[:1]
        return self.env_runner_group.foreach_env_runner(
            _runner_task_ids, local_env_runner=local, remote_worker_ids=ids
        )[0]

    def _sample_task_groups(self, rng: np.random.Generator):
        config = self.config
        task_ids = self._train_task_ids
        picks = rng.choice(len(task_ids), size=config.tasks_per_iteration, replace=len(task_ids) < config.tasks_per_iteration)
        tasks = [task_ids[int(i)] for i in picks]
        local = config.num_env_runners == 0
        workers = [0] if local else self.env_runner_group.healthy_worker_ids()
        schedules = {
            w: [t for t in tasks[j :: len(workers)] for _ in range(config.group_size)]
            for j, w in enumerate(workers)
        }
        results = self.env_runner_group.foreach_env_runner(
            functools.partial(_sample_scheduled, schedules=schedules, seed_key=self._seed_key),
            local_env_runner=local,
            remote_worker_ids=None if local else workers,
        )
        episodes = [ep for eps, _ in results for ep in eps]
        return episodes, [metrics for _, metrics in results]

    def _group_advantages(self, episodes) -> tuple[list[Rollout], np.ndarray]:
        """Group rollouts by task; a task with a single rollout has no baseline and is dropped."""
        rollouts = [r for r in map(_to_rollout, episodes) if r is not None]
        groups: dict[Hashable, int] = {}
        for r in rollouts:
            groups.setdefault(repr(r.task_id), 0)
            groups[repr(r.task_id)] += 1
        kept = [r for r in rollouts if groups[repr(r.task_id)] >= 2]
        group_of = {key: g for g, key in enumerate(k for k, n in groups.items() if n >= 2)}
        self.metrics.log_dict(_rollout_stats(rollouts) | {
            "num_groups": len(group_of),
            "dropped_rollouts": len(rollouts) - len(kept),
        }, key=ROLLOUTS, window=1)
        if not kept:
            return [], np.zeros(0, dtype=np.float32)
        advantages = objectives.group_relative_advantages(
            torch.tensor([r.reward for r in kept]),
            torch.tensor([group_of[repr(r.task_id)] for r in kept]),
            norm=self.config.advantage_norm,
            clip=self.config.advantage_clip,
            clip_mode=self.config.advantage_clip_mode,
        )
        if self.config.step_advantage_weight:
            self._add_step_advantages(kept, advantages)
        return kept, advantages.numpy()

    def _add_step_advantages(self, rollouts: list[Rollout], episode_advantages: torch.Tensor) -> None:
        """GiGPO: each turn row's full advantage (``objectives.gigpo_advantages``), kept in its
        turn's data under ``TURN_ADVANTAGE``. Rows share an anchor group when their rollouts
        have the same task and the same observation at the same turn."""
        rows = [(i, k) for i, r in enumerate(rollouts) for k in sorted(r.turns)]
        anchors: dict[Hashable, int] = {}
        anchor_group = [
            anchors.setdefault((repr(rollouts[i].task_id), k, _hashable(rollouts[i].turns[k][Columns.OBS])), len(anchors))
            for i, k in rows
        ]
        index = torch.tensor([i for i, _ in rows])
        returns = objectives.discounted_turn_returns(
            torch.tensor([rollouts[i].reward for i, _ in rows]),
            torch.tensor([k for _, k in rows]),
            torch.tensor([max(rollouts[i].turns) for i, _ in rows]),
            self.config.step_discount,
        )
        norm = objectives.AdvantageNorm.GROUP_STD if self.config.advantage_norm == "group_std" else objectives.AdvantageNorm.NONE
        full = objectives.gigpo_advantages(
            episode_advantages[index], returns, torch.tensor(anchor_group),
            weight=self.config.step_advantage_weight, norm=norm,
        )
        for (i, k), value in zip(rows, full.tolist()):
            rollouts[i].turns[k][TURN_ADVANTAGE] = value
        sizes = np.bincount(anchor_group)
        self.metrics.log_dict({
            "anchor_groups": len(sizes),
            # The share of turn rows whose anchor state another rollout reached too.
            "shared_anchor_rows": float(sizes[sizes > 1].sum() / len(rows)),
        }, key=ROLLOUTS, window=1)

    def _learner_batches(self, minibatch: dict[str, np.ndarray]) -> dict[str, Any]:
        """``learner_group.update``'s data argument for one minibatch (one optimizer step).

        Every row carries the minibatch's number of rows with a response (the learners
        weigh their losses by it). With several learners the rows are split into shards
        whose sizes differ by at most one, and a learner whose shard would be empty gets
        one row without a response, which adds nothing to the gradient: each learner runs
        its forward and backward, so their gradient all-reduce never waits on one."""
        minibatch[MINIBATCH_ROWS] = np.full(len(minibatch[ADVANTAGES]), int(minibatch[RESPONSE_MASK].any(-1).sum()))
        if self.learner_group.is_local:
            return {"batch": _multi_agent_batch(minibatch)}
        shards = []
        for rows in np.array_split(np.arange(len(minibatch[ADVANTAGES])), len(self.learner_group)):
            if len(rows):
                shards.append({k: v[rows] for k, v in minibatch.items()})
            else:
                empty = {k: v[:1].copy() for k, v in minibatch.items()}
                empty[RESPONSE_MASK][:] = False
                shards.append(empty)
        return {"batches": [_multi_agent_batch(shard) for shard in shards]}

    def _learner_call(self, func):
        """``func(learner)`` on one learner (all hold the same weights)."""
        ids = None if self.learner_group.is_local else self.learner_group._worker_manager.healthy_actor_ids()[:1]
        return next(iter(self.learner_group.foreach_learner(func, remote_actor_ids=ids))).get()

    def response_logp(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """``(B, L)`` log-probs of the rows' responses under the learner's current weights,
        the rows spread over the learners."""
        if self.learner_group.is_local or len(self.learner_group) == 1:
            return self._learner_call(lambda learner: learner.compute_response_logp(SHARED_MODULE_ID, columns))
        results = self.learner_group.foreach_learner(functools.partial(_response_logp_shard, columns=columns))
        shards = sorted(r.get() for r in results)
        return np.concatenate([logp for _, logp in shards if logp is not None])
