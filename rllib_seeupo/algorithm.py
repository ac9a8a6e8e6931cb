"""``SeeUPO``: the training loop (docs/design.md section 2). Each iteration

1. rolls out ``tasks_per_iteration`` tasks ``group_size`` times each and computes each
   rollout's group-relative advantage (with GiGPO's step term, each turn's);
2. updates the turns one after another (reverse order by default), each turn update in four
   steps: build the turn batch, choose its anchor pi_old, take the optimizer steps, carry M
   (HAPPO's compound factor; by default its shared-weight form, the joint ratio of the turns
   already updated against the rollout policy);
3. syncs the new weights to the env runners.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from typing import Hashable

import numpy as np
import torch
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS, ENV_RUNNER_SAMPLING_TIMER, LEARNER_RESULTS, LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME, SYNCH_WORKER_WEIGHTS_TIMER, TIMERS,
)

from rllib_seeupo import objectives
from rllib_seeupo.batching import minibatch_indices
from rllib_seeupo.columns import BEHAVIOUR_LOGP, RESPONSE_MASK
from rllib_seeupo.config import SeeUPOConfig
from rllib_seeupo.learner import ADVANTAGES, COMPOUND_FACTOR, OLD_LOGP, TURN
from rllib_seeupo.llm.engine_actor import start_engines, weight_chunks
from rllib_seeupo.learner_calls import OPTIMIZER_STEPS, learner_batches, learner_call, optimizer_steps, response_logp, seed_learners
from rllib_seeupo.objectives import CompoundFactor, UpdateOrder
from rllib_seeupo.timing import PhaseTimer
from rllib_seeupo.rollouts import Rollout, observation_key, rollout_stats, runner_task_ids, sample_task_groups, to_rollout
from rllib_seeupo.turn_env import SHARED_MODULE_ID

ROLLOUTS = "rollouts"  # metrics key of the rollout/grouping statistics
TURN_ADVANTAGE = "turn_advantage"  # GiGPO: a turn row's own advantage, kept in Rollout.turns[k]
# Phases of `update_policy` timed on the driver (seconds, summed over the turn updates).
UPDATE_PHASES = ("collate", "logp_recompute", "learner_update", "metrics", "compound_update")


@dataclasses.dataclass
class TurnBatch:
    """The rows of one turn update (one turn, or every turn in a parallel update)."""

    columns: dict[str, np.ndarray]  # the learner's columns, one row per (rollout, turn)
    episode_ids: list[str]  # the rollout of each row
    metrics_key: str  # "turn_k" or "all_turns"


class SeeUPO(Algorithm):
    """SeeUPO on RLlib's new API stack. See ``SeeUPOConfig`` for the settings."""

    @classmethod
    def get_default_config(cls) -> SeeUPOConfig:
        return SeeUPOConfig()

    @classmethod
    def default_resource_request(cls, config):
        """RLlib's bundles (driver, env runners, learners) plus one per engine actor, so that
        a Tune trial reserves the engines' GPUs too."""
        from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        request = super().default_resource_request(config)
        if not isinstance(config, AlgorithmConfig):
            config = cls.get_default_config().update_from_dict(config)
        bundles = engine_bundles(config)
        if not bundles:
            return request
        return PlacementGroupFactory(bundles=request.bundles + bundles, strategy=request.strategy)

    def setup(self, config) -> None:
        # Engine actors (``engine.num_engines``) start at the first ``rollout_engines`` call,
        # once the learners hold their GPUs (a colocated engine goes on its learner's): the
        # held-out evaluation before training (an ``on_algorithm_init`` callback of
        # ``super().setup``) or the first sampling round.
        self._engine = engine_settings(config)  # None without engine actors
        self._engines = []
        self._engine_weights = 0  # the version of the learner weights the engines should hold
        try:
            super().setup(config)
        except BaseException:
            self.cleanup()
            raise

    def training_step(self) -> None:
        rng = np.random.default_rng([self.config.seed or 0, self.iteration])
        rollouts, advantages = self.sample_rollouts(rng)
        if not rollouts:
            return
        if self._seed_key is not None:  # this iteration's learner noise (rollouts.seed_learner)
            seed_learners(self.learner_group, self._seed_key)
        colocated = self._engine is not None and self._engine["placement"] == "colocated"
        if colocated:
            _each_engine(self._engines, "sleep")  # they wake at their next request
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            self.update_policy(rollouts, advantages, rng)
        if colocated:
            self.learner_group.foreach_learner(_release_cached_memory)  # the engines take the GPUs back
        steps = optimizer_steps(self.learner_group)
        if steps is not None:  # lifetime, as RLlib's PPO reports it (callbacks.log_optimizer_steps)
            self.metrics.log_value(OPTIMIZER_STEPS, steps, window=1)
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            if self._engine is not None:  # the env runners hold no weights: the engines take them
                self._engine_weights += 1
                self.rollout_engines()
            else:
                self.env_runner_group.sync_weights(
                    from_worker_or_learner_group=self.learner_group, policies=[SHARED_MODULE_ID], inference_only=True
                )

    # -- engine actors ------------------------------------------------------------------------

    def rollout_engines(self, timeout_s: float | None = None) -> list:
        """The engine actors' handles (none without ``engine.num_engines``; the first call
        starts them), each alive and holding the learner's current weights: one that Ray
        restarted, or that missed a sync, gets them now. Waits up to ``timeout_s`` (``env_runner_restore_timeout_s``)
        for a restarting engine."""
        if self._engine is None:
            return []
        if not self._engines:
            self._engines = self._start_engines()
        timeout_s = self.config.env_runner_restore_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        versions = [_engine_info(engine, deadline) for engine in self._engines]
        stale = [e for e, info in zip(self._engines, versions) if info["version"] != self._engine_weights]
        if stale:
            components = f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{SHARED_MODULE_ID}"
            state = self.learner_group.get_state(components=[components], inference_only=True)
            chunks = weight_chunks(state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][SHARED_MODULE_ID])
            for i, chunk in enumerate(chunks):  # the version only with the last chunk
                version = self._engine_weights if i == len(chunks) - 1 else None
                chunk = ray.put(chunk)
                ray.get([engine.set_weights.remote(chunk, version) for engine in stale], timeout=timeout_s)
        return list(self._engines)

    def _start_engines(self) -> list:
        """The engine actors, started; colocated ones each on one learner's GPUs."""
        devices = None
        if self._engine["placement"] == "colocated":
            devices = [r.get() for r in self.learner_group.foreach_learner(_visible_devices)]
        return start_engines(self.config.model_config, visible_devices=devices)

    @property
    def engine_weights_version(self) -> int:
        """The version of the learner weights that the engine actors hold once
        ``rollout_engines`` returns (it moves on with every update and restore)."""
        return self._engine_weights

    def restore_from_path(self, path, *args, **kwargs):
        super().restore_from_path(path, *args, **kwargs)
        self._engine_weights += 1  # the learner's weights changed: the engines take them before sampling

    def set_state(self, state) -> None:
        super().set_state(state)
        self._engine_weights += 1

    def cleanup(self) -> None:
        super().cleanup()
        for engine in getattr(self, "_engines", []):
            ray.kill(engine)
        self._engines = []

    def _log_engine_syncs(self) -> None:
        """The engines' weight loads of this iteration as ``env_runners/weight_sync/*``
        (a vLLM engine loads a pushed adapter with its first request)."""
        syncs = [s for stats in _each_engine(self._engines, "pop_weight_sync_stats") for s in stats]
        totals = {"count": float(len(syncs)), "bytes": sum(s["bytes"] for s in syncs), "seconds": sum(s["seconds"] for s in syncs)}
        self.metrics.log_dict(totals, key=(ENV_RUNNER_RESULTS, "weight_sync"), window=1)

    def sample_rollouts(self, rng: np.random.Generator) -> tuple[list[Rollout], np.ndarray]:
        """Roll out ``tasks_per_iteration`` tasks ``group_size`` times each.

        Returns:
            The rollouts of tasks with at least two rollouts, and their ``(N,)`` advantages.
        """
        config, local = self.config, self.config.num_env_runners == 0
        start = time.perf_counter()
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            task_ids = self._train_task_ids
            picks = rng.choice(len(task_ids), size=config.tasks_per_iteration, replace=len(task_ids) < config.tasks_per_iteration)
            episodes, runner_metrics, retried = sample_task_groups(
                self.env_runner_group, [task_ids[int(i)] for i in picks], config.group_size, self._seed_key, local,
                restore=lambda: self.restore_env_runners(self.env_runner_group),
                restore_timeout_s=config.env_runner_restore_timeout_s,
                engines=(lambda: (self.rollout_engines(), self.engine_weights_version)) if self._engine is not None else None,
            )
            self.metrics.aggregate(runner_metrics, key=ENV_RUNNER_RESULTS)
            if self._engine is not None:
                self._log_engine_syncs()
            self.metrics.log_value((ROLLOUTS, "retried_groups"), retried, window=1)
        sampling_s = time.perf_counter() - start
        rollouts, advantages = self._group_advantages(episodes)
        tokens = self.metrics.peek((ROLLOUTS, "response_tokens"), default=0.0)
        if tokens:
            self.metrics.log_value((ROLLOUTS, "tokens_per_s"), tokens / sampling_s, window=1)
        return rollouts, advantages

    def update_policy(self, rollouts: list[Rollout], advantages: np.ndarray, rng: np.random.Generator, *,
                      update_order: str | None = None) -> dict[str, float]:
        """Update the turns of ``rollouts`` one after another, carrying M between them.

        Args:
            rollouts, advantages: as returned by ``sample_rollouts``.
            update_order: overrides ``config.update_order`` (benchmarks compare orders on
                one batch).
        Returns:
            Seconds per phase, summed over the turn updates, also logged under
            ``timers/update_phases``: ``collate`` (building the batches), ``logp_recompute``
            (no-grad passes for pi_old and the stepwise M), the learner's ``forward`` (with the loss),
            ``backward`` and ``optimizer_step`` (clipping and step), ``learner_overhead``
            (RLlib's per-update plumbing), ``compound_update``, ``metrics``, ``other`` and
            ``total`` (``compound_update``: the cumulative M's passes included).
        """
        config, start = self.config, time.perf_counter()
        self._phase.pop()  # the phases of this update only
        order = update_order or config.update_order
        rule = CompoundFactor.NONE if order == UpdateOrder.PARALLEL else CompoundFactor(config.compound_factor)
        schedule = objectives.update_schedule(order, self._trained_turns(rollouts), rng)
        compound = {r.episode_id: 1.0 for r in rollouts}  # M of each rollout
        updated: list[TurnBatch] = []  # the turns updated so far (cumulative M)
        for position, turns in enumerate(schedule):
            last = position + 1 == len(schedule)
            if rule == CompoundFactor.CUMULATIVE and updated:
                self._cumulative_compound(updated, compound)
            batch = self._turn_batch(turns, order, rollouts, advantages, compound, rng)
            if self._has_signal(batch):
                carry = rule == CompoundFactor.STEPWISE and not last
                before = self._anchor(batch, carry)
                self._step(batch, rng)
                if carry:
                    self._carry_stepwise_compound(batch, before, compound)
            if rule == CompoundFactor.CUMULATIVE and not last:
                updated.append(batch)
        return self._log_update_phases(time.perf_counter() - start)

    # -- the four steps of a turn update -------------------------------------------------

    def _turn_batch(self, turns: list[int], order: str, rollouts: list[Rollout], advantages: np.ndarray,
                    compound: dict[str, float], rng: np.random.Generator) -> TurnBatch:
        """The rows of ``turns`` (one turn, or all of them in a parallel update) with their
        advantages (GiGPO: each row's own) and their rollout's M."""
        with self._phase("collate"):
            rows = [(i, k) for k in turns for i, r in enumerate(rollouts) if k in r.turns]
            if self.config.shuffle_batch_per_epoch:  # minibatches mix turns (parallel) and tasks
                rows = [rows[j] for j in rng.permutation(len(rows))]
            columns = self._module_class.collate_turn_rows([rollouts[i].turns[k] for i, k in rows])
            episode_ids = [rollouts[i].episode_id for i, _ in rows]
            if self.config.step_advantage_weight:
                columns[ADVANTAGES] = np.array([rollouts[i].turns[k][TURN_ADVANTAGE] for i, k in rows], dtype=np.float32)
            else:
                columns[ADVANTAGES] = advantages[[i for i, _ in rows]]
            columns[COMPOUND_FACTOR] = np.array([compound[e] for e in episode_ids], dtype=np.float32)
            parallel = order == UpdateOrder.PARALLEL and len(turns) > 1
            columns[TURN] = np.full(len(rows), -1 if parallel else turns[0], dtype=np.int64)
        return TurnBatch(columns, episode_ids, "all_turns" if parallel else f"turn_{turns[0]}")

    def _has_signal(self, batch: TurnBatch) -> bool:
        """False for an update without a gradient (zero advantages, no KL or entropy term),
        which ``skip_zero_advantage_updates`` skips: Adam's carried moments would still move
        the weights."""
        config = self.config
        if np.any(batch.columns[ADVANTAGES]) or config.kl_coeff or config.entropy_coeff or not config.skip_zero_advantage_updates:
            return True
        self.metrics.log_value((LEARNER_RESULTS, SHARED_MODULE_ID, batch.metrics_key, "skipped"), 1.0, window=1)
        return False

    def _anchor(self, batch: TurnBatch, carry: bool) -> np.ndarray | None:
        """Set pi_old (``OLD_LOGP``): the rollout policy (``old_policy: rollout``) or the
        current weights (``current``). Returns the current weights' ``(B, L)`` log-probs when
        they were computed (pi_old or the stepwise M needs them), else None."""
        config = self.config
        # With one full-batch step on a local learner, pi_old (the current weights) is what
        # the update's own forward pass computes: no separate pass is needed.
        single_step = config.num_epochs_per_turn == 1 and config.minibatch_size is None and self.learner_group.is_local
        before = None
        if not single_step and (config.old_policy == "current" or carry):
            with self._phase("logp_recompute"):
                before = response_logp(self.learner_group, batch.columns)
        old = batch.columns[BEHAVIOUR_LOGP] if config.old_policy == "rollout" else before
        if old is not None:
            batch.columns[OLD_LOGP] = old
        return before

    def _step(self, batch: TurnBatch, rng: np.random.Generator) -> None:
        """``num_epochs_per_turn`` passes over the rows, each split into shuffled minibatches of
        at most ``minibatch_size`` rows (every row once per pass), one optimizer step each."""
        config, columns = self.config, batch.columns
        timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)}
        parts = minibatch_indices(len(columns[ADVANTAGES]), config.minibatch_size, config.num_epochs_per_turn,
                                  config.shuffle_batch_per_epoch, rng)
        for part in parts:
            with self._phase("learner_update"):
                minibatch = learner_batches(self.learner_group, {k: v[part] for k, v in columns.items()})
                results = self.learner_group.update(**minibatch, timesteps=timesteps, num_epochs=1, minibatch_size=None)
            with self._phase("metrics"):  # aggregated per minibatch: the per-turn figures are their means
                self.metrics.aggregate(results, key=LEARNER_RESULTS)
        m = columns[COMPOUND_FACTOR]
        with self._phase("metrics"):
            self.metrics.log_dict({"compound_factor_mean": float(m.mean()), "compound_factor_min": float(m.min()),
                                   "compound_factor_max": float(m.max())}, key=(LEARNER_RESULTS, SHARED_MODULE_ID, batch.metrics_key), window=1)

    def _carry_stepwise_compound(self, batch: TurnBatch, before: np.ndarray | None, compound: dict[str, float]) -> None:
        """HAPPO's stepwise M: fold this update's ratio change of each rollout's response
        (after / before the update) into its M."""
        with self._phase("compound_update"):
            if before is None:  # the single step's own forward pass ran at pi_old
                before = learner_call(self.learner_group, lambda learner: learner.pre_step_response_logp())
        with self._phase("logp_recompute"):
            after = response_logp(self.learner_group, batch.columns)
        with self._phase("compound_update"):
            mask = torch.tensor(batch.columns[RESPONSE_MASK])
            rho = torch.exp(objectives.sequence_log_ratio(torch.tensor(after), torch.tensor(before), mask))
            m = objectives.update_compound_factor(torch.tensor(batch.columns[COMPOUND_FACTOR]), rho, self.config.compound_clip)
            compound.update(zip(batch.episode_ids, m.tolist()))

    def _cumulative_compound(self, updated: list[TurnBatch], compound: dict[str, float]) -> None:
        """The shared-weight M of every rollout: the joint ratio of its turns updated so far,
        current weights against the rollout policy."""
        with self._phase("compound_update"):
            log_sum = dict.fromkeys(compound, 0.0)
            for batch in updated:
                now, mask = response_logp(self.learner_group, batch.columns), torch.tensor(batch.columns[RESPONSE_MASK])
                log_s = objectives.sequence_log_ratio(torch.tensor(now), torch.tensor(batch.columns[BEHAVIOUR_LOGP]), mask)
                for episode_id, value in zip(batch.episode_ids, log_s.tolist()):
                    log_sum[episode_id] += value
            m = objectives.cumulative_compound_factor(torch.tensor(list(log_sum.values()), dtype=torch.float64), self.config.compound_clip)
            compound.update(zip(log_sum, m.tolist()))

    # -- advantages -------------------------------------------------------------------------

    def _group_advantages(self, episodes) -> tuple[list[Rollout], np.ndarray]:
        """Group rollouts by task; a task with a single rollout has no baseline and is dropped."""
        rollouts = [r for r in map(to_rollout, episodes) if r is not None]
        counts = collections.Counter(repr(r.task_id) for r in rollouts)
        kept = [r for r in rollouts if counts[repr(r.task_id)] >= 2]
        group_of = {key: g for g, key in enumerate(k for k, n in counts.items() if n >= 2)}
        self.metrics.log_dict(rollout_stats(rollouts) | {"num_groups": len(group_of), "dropped_rollouts": len(rollouts) - len(kept)},
                              key=ROLLOUTS, window=1)
        if not kept:
            return [], np.zeros(0, dtype=np.float32)
        advantages = self.compute_advantages(torch.tensor([r.reward for r in kept]),
                                             torch.tensor([group_of[repr(r.task_id)] for r in kept]))
        if self.config.step_advantage_weight:
            self._add_step_advantages(kept, advantages)
        return kept, advantages.numpy()

    def compute_advantages(self, rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
        """``(N,)`` float32 advantages of the rollouts from their ``(N,)`` rewards and task
        groups (``group_index`` in ``[0, num_groups)``): GRAE scaled as ``advantage_norm``
        says. Override it in a subclass for an estimator of your own."""
        config = self.config
        return objectives.group_relative_advantages(rewards, group_index, norm=config.advantage_norm,
                                                    clip=config.advantage_clip, clip_mode=config.advantage_clip_mode)

    def _add_step_advantages(self, rollouts: list[Rollout], episode_advantages: torch.Tensor) -> None:
        """GiGPO: each turn row's full advantage (``objectives.gigpo_advantages``), kept in its
        turn's data under ``TURN_ADVANTAGE``. Rows share an anchor group when their rollouts
        have the same task and the same observation at the same turn."""
        rows = [(i, k) for i, r in enumerate(rollouts) for k in sorted(r.turns)]
        anchors: dict[Hashable, int] = {}
        anchor_group = [
            anchors.setdefault((repr(rollouts[i].task_id), k, observation_key(rollouts[i].turns[k][Columns.OBS])), len(anchors))
            for i, k in rows
        ]
        returns = objectives.discounted_turn_returns(
            torch.tensor([rollouts[i].reward for i, _ in rows]), torch.tensor([k for _, k in rows]),
            torch.tensor([max(rollouts[i].turns) for i, _ in rows]), self.config.step_discount,
        )
        norm = "group_std" if self.config.advantage_norm == "group_std" else "none"
        full = objectives.gigpo_advantages(episode_advantages[torch.tensor([i for i, _ in rows])], returns,
                                           torch.tensor(anchor_group), weight=self.config.step_advantage_weight, norm=norm)
        for (i, k), value in zip(rows, full.tolist()):
            rollouts[i].turns[k][TURN_ADVANTAGE] = value
        sizes = np.bincount(anchor_group)
        # anchor_groups, and the share of turn rows whose anchor state another rollout reached too.
        self.metrics.log_dict({"anchor_groups": len(sizes), "shared_anchor_rows": float(sizes[sizes > 1].sum() / len(rows))},
                              key=ROLLOUTS, window=1)

    # -- plumbing ---------------------------------------------------------------------------

    def _trained_turns(self, rollouts: list[Rollout]) -> set[int]:
        """The turns that enter the update: all, or those below ``max_turns`` (the rows of
        later turns counted in ``rollouts/dropped_turns``)."""
        turns = {k for r in rollouts for k in r.turns}
        if self.config.max_turns is None:
            return turns
        dropped = sum(k >= self.config.max_turns for r in rollouts for k in r.turns)
        self.metrics.log_value((ROLLOUTS, "dropped_turns"), dropped, window=1)
        return {k for k in turns if k < self.config.max_turns}

    def _log_update_phases(self, total: float) -> dict[str, float]:
        """The driver's phases plus the learner's split of its update (forward, backward,
        optimizer step), logged under ``timers/update_phases``."""
        timings = dict.fromkeys(UPDATE_PHASES, 0.0) | self._phase.pop()
        inside = learner_call(self.learner_group, lambda learner: getattr(learner, "pop_phase_seconds", dict)())
        timings["learner_overhead"] = timings.pop("learner_update") - inside.get("update_step", 0.0)
        timings["backward"] = inside.get("backward", 0.0)
        timings["optimizer_step"] = inside.get("optimizer_step", 0.0)
        timings["forward"] = inside.get("update_step", 0.0) - timings["backward"] - timings["optimizer_step"]
        timings["total"] = total
        timings["other"] = total - sum(v for k, v in timings.items() if k not in ("total", "other"))
        self.metrics.log_dict(timings, key=(TIMERS, "update_phases"), window=1)
        return timings

    @property
    def _seed_key(self) -> tuple[int, int] | None:
        """``(config.seed, iteration)``, which seeds this iteration's sampling and learner
        noise; None (nothing seeded) without ``config.seed``."""
        return None if self.config.seed is None else (int(self.config.seed), int(self.iteration))

    @functools.cached_property
    def _phase(self) -> PhaseTimer:
        return PhaseTimer()

    @functools.cached_property
    def _module_class(self):
        return self.config.rl_module_spec.module_class

    @functools.cached_property
    def _train_task_ids(self):
        local = self.config.num_env_runners == 0
        ids = None if local else self.env_runner_group.healthy_worker_ids()[:1]
        return self.env_runner_group.foreach_env_runner(runner_task_ids, local_env_runner=local, remote_worker_ids=ids)[0]

    def response_logp(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """``(B, L)`` log-probs of the rows' responses under the learners' current weights."""
        return response_logp(self.learner_group, columns)


def engine_bundles(config) -> list[dict[str, float]]:
    """One Ray resource bundle per engine actor of ``config`` (none without them, or when an
    engine asks for no resources)."""
    engine = engine_settings(config)
    if engine is None:
        return []
    bundle = {k: v for k, v in (("CPU", engine["num_cpus_per_engine"]), ("GPU", engine["num_gpus_per_engine"])) if v}
    return [bundle] * engine["num_engines"] if bundle else []


def _release_cached_memory(learner) -> None:
    """Return the learner's cached accelerator memory (its update's activations) to the
    device, so that colocated engines can wake up into it."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _visible_devices(learner) -> str | None:
    """The GPUs that the learner's process sees (Ray sets ``CUDA_VISIBLE_DEVICES`` in a
    learner actor to the GPU it gave it; RLlib does not share them between learners)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def engine_settings(config) -> dict | None:
    """The checked ``model_config.engine`` of a run with engine actors; None without them."""
    from rllib_seeupo.llm.module import checked_engine

    engine = (config.model_config or {}).get("engine")
    if not isinstance(engine, dict) or not engine.get("num_engines"):
        return None
    return checked_engine(engine)


def _each_engine(engines: list, method: str) -> list:
    """``method`` of every engine actor, in order; an engine lost meanwhile answers ``[]``
    (Ray restarts it, and ``rollout_engines`` gives it the weights before it samples)."""
    results = []
    for ref in [getattr(engine, method).remote() for engine in engines]:
        try:
            results.append(ray.get(ref))
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError):
            results.append([])
    return results


def _engine_info(engine, deadline: float) -> dict:
    """``RolloutEngine.info`` of an engine actor, waiting (until ``deadline``, a
    ``time.monotonic()``) while Ray restarts it."""
    while True:
        try:
            return ray.get(engine.info.remote(), timeout=max(deadline - time.monotonic(), 1.0))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
