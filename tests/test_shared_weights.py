"""The shared-weight case of SeeUPO: the switches that keep its trust region when every turn
shares one set of weights, each checked to do what it says, and the shared-parameter bandit
on which a turn's update moves the other turns' action probabilities."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_seeupo import SHARED_MODULE_ID, SeeUPOConfig
from rllib_seeupo import objectives
from rllib_seeupo.batching import minibatch_indices as _minibatches
from rllib_seeupo.callbacks import BanditOptimality
from rllib_seeupo.modules.tabular import SharedMLPSoftmaxRLModule

BANDIT = {"num_turns": 3, "num_actions": 3, "num_contexts": 2, "kind": "needle", "observation": "full", "seed": 0}


def bandit_config(shared=False, **training):
    training = {"group_size": 4, "tasks_per_iteration": 4, "lr": 0.05, "kl_coeff": 0.0, **training}
    config = (
        SeeUPOConfig()
        .environment("seeupo/bandit", env_config=dict(BANDIT))
        .training(**training)
        .callbacks(BanditOptimality)
        .debugging(seed=0)
    )
    if shared:
        config.rl_module(rl_module_spec=RLModuleSpec(module_class=SharedMLPSoftmaxRLModule), model_config={"bandit": BANDIT})
    return config


def _params(algo):
    return {k: v.detach().clone() for k, v in algo.get_module(SHARED_MODULE_ID).named_parameters()}


def _optimizer(algo):
    return next(iter(algo.learner_group._learner._named_optimizers.values()))


def _batch(algo, seed=0):
    return algo.sample_rollouts(np.random.default_rng(seed))


# -- pure functions --------------------------------------------------------------------


def test_seeupo_defaults_are_the_shared_weight_rule_and_the_presets_keep_theirs():
    """docs/log/2026-12-01-shared-weight-case.md (section 4d) chose SeeUPO's defaults; the baselines must not inherit them."""
    from rllib_seeupo.presets import GRAEReinforceConfig, GRPOConfig, GSPOConfig, RLOOConfig

    def rule(config):
        return (config.old_policy, config.compound_factor, config.advantage_clip_mode, config.skip_zero_advantage_updates)

    assert rule(SeeUPOConfig()) == ("rollout", "cumulative", "scale_group", True)
    assert SeeUPOConfig().advantage_norm == "group_std"  # docs/RESULTS.md section 2
    for preset in (GRPOConfig, GSPOConfig, RLOOConfig, GRAEReinforceConfig):
        assert rule(preset()) == ("current", "none", "clamp", False), preset.__name__


def test_group_scaled_clip_keeps_every_group_summing_to_zero():
    rewards = torch.tensor([1.0] + [0.0] * 7 + [1.0, 1.0] + [0.0] * 6 + [0.0] * 16)
    groups = torch.arange(32) // 8
    clamped = objectives.group_relative_advantages(rewards, groups, norm="batch", clip=3.0, clip_mode="clamp")
    assert clamped[:8].sum() < -0.1  # the clamp cuts the rare success, not its failures
    scaled = objectives.group_relative_advantages(rewards, groups, norm="batch", clip=3.0, clip_mode="scale_group")
    for g in range(4):
        assert abs(float(scaled[groups == g].sum())) < 1e-5
    assert float(scaled.abs().max()) == pytest.approx(3.0)
    # A group within the bound is left as the batch scale made it.
    unclipped = objectives.group_relative_advantages(rewards, groups, norm="batch", clip=None)
    assert torch.allclose(scaled[8:16], unclipped[8:16])


def test_cumulative_compound_factor_is_the_clipped_joint_ratio():
    log_sum = torch.tensor([0.0, 0.05, -0.05, 1.0, -1.0], dtype=torch.float64)
    m = objectives.cumulative_compound_factor(log_sum, 0.2)
    assert torch.allclose(m, torch.tensor([1.0, np.exp(0.05), np.exp(-0.05), 1.2, 0.8], dtype=torch.float64))


def test_clip_fraction_counts_rows_at_every_ratio_level():
    mask = torch.ones(2, 4, dtype=torch.bool)
    old = torch.zeros(2, 4)
    # Row 0: one token far out of the clip range, the sequence ratio inside it; row 1: all out.
    logp = torch.tensor([[0.5, 0.0, 0.0, -0.3], [0.5, 0.5, 0.5, 0.5]])
    args = dict(logp=logp, old_logp=old, mask=mask, advantages=torch.ones(2), compound_factor=torch.ones(2), clip=0.2)
    _, seq = objectives.policy_loss(ratio_level="sequence", **args)
    _, tok = objectives.policy_loss(ratio_level="token", **args)
    assert seq["clip_fraction"] == tok["clip_fraction"] == 0.5
    assert tok["token_clip_fraction"] == pytest.approx((2 / 4 + 1) / 2)
    assert seq["kl_old"] > 0


def test_minibatches_take_every_row_once_per_pass():
    rng = np.random.default_rng(0)
    parts = list(_minibatches(13, 4, 3, True, rng))
    assert [len(p) for p in parts] == [4, 4, 4, 1] * 3
    for epoch in range(3):
        assert sorted(np.concatenate(parts[4 * epoch : 4 * epoch + 4]).tolist()) == list(range(13))
    assert [p.tolist() for p in _minibatches(5, None, 1, True, rng)] == [[0, 1, 2, 3, 4]]


# -- the shared-parameter bandit ----------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_a_turn_update_moves_the_other_turns_only_with_shared_weights(ray_session, shared):
    algo = bandit_config(shared=shared).build_algo()
    try:
        rollouts, advantages = _batch(algo)
        module = algo.get_module(SHARED_MODULE_ID)
        before = module.action_probabilities()
        rng = np.random.default_rng(0)
        batch = algo._turn_batch([2], "reverse", rollouts, advantages, {r.episode_id: 1.0 for r in rollouts}, rng)
        algo._anchor(batch, carry=False)
        algo._step(batch, rng)
        after = algo.learner_group._learner.module[SHARED_MODULE_ID].action_probabilities()
        from envs.bandit import make_instance

        turn = make_instance(**BANDIT).state_features()[:, BANDIT["num_contexts"] : BANDIT["num_contexts"] + 3].argmax(1)
        moved = np.abs(after - before).max(axis=1)
        assert moved[turn == 2].max() > 1e-4  # the updated turn moved
        if shared:
            assert moved[turn < 2].max() > 1e-4  # ... and, through the shared layer, the others
        else:
            assert moved[turn < 2].max() == 0.0
    finally:
        algo.stop()


def test_shared_module_checks_that_it_describes_the_env(ray_session):
    config = bandit_config(shared=True)
    config.rl_module(model_config={"bandit": {**BANDIT, "num_turns": 4}})
    with pytest.raises(Exception, match="describes 80 states, the env has 26"):
        config.build_algo()


# -- the switches -------------------------------------------------------------------------


def test_the_algorithm_computes_advantages_with_its_configured_clip_mode(ray_session):
    """The switch must reach the training batch, not just the pure function: the same
    rollouts get clamped advantages under ``clamp`` and zero-sum ones under ``scale_group``."""
    figures = {}
    for mode in ("clamp", "scale_group"):
        algo = bandit_config(advantage_norm="batch", advantage_clip=0.5, advantage_clip_mode=mode).build_algo()
        try:
            rollouts, advantages = _batch(algo)
        finally:
            algo.stop()
        groups = np.array([hash(repr(r.task_id)) for r in rollouts])
        figures[mode] = (advantages, [float(advantages[groups == g].sum()) for g in np.unique(groups)])
    clamped, scaled = figures["clamp"][0], figures["scale_group"][0]
    assert np.abs(clamped).max() == pytest.approx(0.5) and np.abs(scaled).max() == pytest.approx(0.5)
    assert all(abs(total) < 1e-5 for total in figures["scale_group"][1])
    assert not np.allclose(clamped, scaled)


@pytest.mark.parametrize("skip, kl_coeff", [(False, 0.0), (True, 0.0), (True, 0.1)])
def test_an_update_without_signal_moves_nothing_only_when_skipped(ray_session, skip, kl_coeff):
    """All-zero advantages are no signal only without a KL term: with one, the step is taken."""
    algo = bandit_config(skip_zero_advantage_updates=skip, kl_coeff=kl_coeff).build_algo()
    try:
        rollouts, advantages = _batch(algo)
        rng = np.random.default_rng(0)
        algo.update_policy(rollouts, advantages, rng)  # Adam now carries first moments
        before = algo.learner_group._learner.module[SHARED_MODULE_ID].logits.detach().clone()
        algo.update_policy(rollouts, np.zeros_like(advantages), rng)
        after = algo.learner_group._learner.module[SHARED_MODULE_ID].logits.detach().clone()
        assert torch.equal(before, after) == (skip and kl_coeff == 0)
    finally:
        algo.stop()


def test_per_turn_figures_are_means_over_the_turns_minibatches(ray_session):
    # 16 rows per turn in minibatches of 10: two steps of 10 and 6 rows.
    result = bandit_config(minibatch_size=10).build_algo()
    try:
        stats = result.train()["learners"][SHARED_MODULE_ID]
        for k in range(3):
            assert stats[f"turn_{k}"]["rows"] == pytest.approx(8.0)
    finally:
        result.stop()


def test_parallel_minibatches_mix_the_turns(ray_session):
    algo = bandit_config(update_order="parallel", minibatch_size=8).build_algo()
    try:
        rollouts, advantages = _batch(algo)
        # With full observations a state belongs to one turn.
        turn_of_state = {int(r.turns[k][Columns.OBS]): k for r in rollouts for k in r.turns}
        seen = []
        real_update = algo.learner_group.update

        def spy(*, batch, **kwargs):
            columns = batch.policy_batches[SHARED_MODULE_ID]
            assert set(columns["turn"].tolist()) == {-1}  # one parallel update: "all_turns"
            seen.append({turn_of_state[int(s)] for s in columns[Columns.OBS]})
            return real_update(batch=batch, **kwargs)

        algo.learner_group.update = spy
        algo.update_policy(rollouts, advantages, np.random.default_rng(0))
        assert len(seen) == 6 and all(len(turns) > 1 for turns in seen)
    finally:
        algo.stop()


def test_cumulative_m_sees_the_carried_adam_moment_that_stepwise_m_misses(ray_session):
    """With one table per turn but one Adam state for the whole table, a turn's step also
    moves the rows of the turns updated before it (their carried first moment), which only
    the cumulative M sees."""
    factors = {}
    for mode in ("stepwise", "cumulative"):
        algo = bandit_config(compound_factor=mode, old_policy="rollout", lr=0.01, compound_clip=0.9).build_algo()
        try:
            stats = algo.train()["learners"][SHARED_MODULE_ID]
            factors[mode] = [stats[f"turn_{k}"]["compound_factor_mean"] for k in range(3)]
        finally:
            algo.stop()
    assert factors["stepwise"][2] == factors["cumulative"][2] == 1.0
    assert factors["stepwise"][0] != 1.0
    assert not np.allclose(factors["stepwise"], factors["cumulative"], atol=1e-6), factors


def test_cumulative_m_sees_what_shared_weights_did_to_earlier_updated_turns(ray_session):
    factors = {}
    for mode in ("stepwise", "cumulative"):
        algo = bandit_config(shared=True, compound_factor=mode, old_policy="rollout", lr=0.05, compound_clip=0.9,
                             minibatch_size=4, num_epochs_per_turn=2).build_algo()
        try:
            stats = algo.train()["learners"][SHARED_MODULE_ID]
            factors[mode] = [stats[f"turn_{k}"]["compound_factor_mean"] for k in range(3)]
        finally:
            algo.stop()
    assert factors["stepwise"][2] == factors["cumulative"][2] == 1.0
    assert abs(factors["stepwise"][0] - factors["cumulative"][0]) > 1e-4


def test_drift_diagnostic_ranks_a_restarted_trust_region_above_the_rollout_anchor(ray_session):
    """Measured with benchmarks/drift.py: on shared weights with several steps per turn,
    recomputing pi_old before each turn lets the iteration drift several times further from
    the rollout policy than anchoring every turn there (with the cumulative M)."""
    from rllib_seeupo.diagnostics import policy_drift

    from pathlib import Path

    from rllib_seeupo.experiment import build_config, load_experiment

    example = Path(__file__).resolve().parents[1] / "tuned_examples" / "bandit_shared_seeupo.yaml"
    drift, batches = {}, []
    clamp = ["advantage_norm=batch", "advantage_clip_mode=clamp", "skip_zero_advantage_updates=false"]
    for name, settings in (("released", ["old_policy=current", "compound_factor=stepwise", *clamp]),
                           ("anchored", ["old_policy=rollout", "compound_factor=cumulative", *clamp])):
        overrides = ["minibatch_size=16", "num_epochs_per_turn=2", "lr=0.03", *settings]
        algo = build_config(load_experiment(example, overrides)).build_algo()
        try:
            rng = np.random.default_rng(0)
            rollouts, advantages = algo.sample_rollouts(rng)
            batches.append([r.reward for r in rollouts])
            algo.update_policy(rollouts, advantages, rng)
            drift[name] = policy_drift(algo, rollouts, advantages)
        finally:
            algo.stop()
    assert batches[0] == batches[1]  # the same batch, replayed
    for turn in ("turn_0", "turn_1", "turn_2"):
        assert drift["released"][turn]["kl"] > 2 * drift["anchored"][turn]["kl"] > 0, (turn, drift)
        assert abs(drift["released"][turn]["advantage_sum"]) < 1e-4
