"""SeeUPO as an RLlib Algorithm on the bandit: metrics, presets, validation, scale-out,
checkpoints, Tune by name, and reaching the optimum."""

import numpy as np
import pytest
import torch

from rllib_seeupo import GRAEReinforceConfig, GRPOConfig, GSPOConfig, RLOOConfig, SHARED_MODULE_ID, SeeUPO, SeeUPOConfig
from rllib_seeupo.callbacks import BanditOptimality

BANDIT = {"num_turns": 3, "num_actions": 3, "num_contexts": 4, "kind": "needle", "seed": 0}


def bandit_config(config_cls=SeeUPOConfig, env_config=BANDIT, **training):
    training = {"group_size": 4, "tasks_per_iteration": 4, "lr": 0.1, **training}
    return (
        config_cls()
        .environment("seeupo/bandit", env_config=dict(env_config))
        .training(**training)
        .callbacks(BanditOptimality)
        .debugging(seed=0)
    )


def _table(algo):
    return algo.get_module(SHARED_MODULE_ID).logits.detach().clone()


class MedianBaselineSeeUPO(SeeUPO):
    """The README's example of an advantage estimator of one's own: reward minus the group's median."""

    def compute_advantages(self, rewards, group_index):
        advantages = torch.zeros(len(rewards))
        for group in group_index.unique():
            members = group_index == group
            advantages[members] = rewards[members] - rewards[members].median()
        return advantages


def test_a_subclass_supplies_its_own_advantage_estimator(ray_session):
    config = SeeUPOConfig(algo_class=MedianBaselineSeeUPO).environment("seeupo/bandit", env_config=dict(BANDIT))
    algo = config.training(group_size=4, tasks_per_iteration=4, lr=0.1, kl_coeff=0.0).debugging(seed=0).build_algo()
    try:
        rollouts, advantages = algo.sample_rollouts(np.random.default_rng(0))
        for task in {repr(r.task_id) for r in rollouts}:
            members = [i for i, r in enumerate(rollouts) if repr(r.task_id) == task]
            rewards = torch.tensor([rollouts[i].reward for i in members])
            assert np.allclose(advantages[members], (rewards - rewards.median()).numpy())
        assert np.any(advantages)
        before = _table(algo)
        algo.update_policy(rollouts, advantages, np.random.default_rng(0))
        assert not torch.equal(before, algo.learner_group._learner.module[SHARED_MODULE_ID].logits.detach())
    finally:
        algo.stop()


def test_one_iteration_logs_per_turn_metrics_and_changes_the_policy(ray_session):
    algo = bandit_config(kl_coeff=0.01).build_algo()
    try:
        before = _table(algo)
        result = algo.train()
        stats = result["learners"][SHARED_MODULE_ID]
        for k in range(3):
            turn = stats[f"turn_{k}"]
            for key in ("policy_loss", "ratio_mean", "clip_fraction", "kl", "entropy", "grad_norm", "rows",
                        "compound_factor_mean", "compound_factor_min", "compound_factor_max"):
                assert key in turn, (k, key)
            assert turn["rows"] == 16  # 4 tasks x 4 rollouts, each with every turn
            assert turn["grad_norm"] > 0
        # The last turn is updated first: nothing has changed yet, so M = 1 exactly.
        assert stats["turn_2"]["compound_factor_min"] == stats["turn_2"]["compound_factor_max"] == 1.0
        assert result["rollouts"]["num_rollouts"] == 16 and result["rollouts"]["num_groups"] == 4
        assert 0 <= result["optimality_ratio"] <= 1
        first = result["optimizer_steps"]
        assert first >= 3  # at least one step per turn
        assert algo.train()["optimizer_steps"] == 2 * first  # lifetime: the same steps again
        after = _table(algo)
        assert not torch.allclose(before, after), "training did not change the policy"
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "config_cls, order, norm, ratio",
    [
        (GRPOConfig, "parallel", "group_std", "token"),
        (GSPOConfig, "parallel", "group_std", "sequence"),
        (RLOOConfig, "parallel", "leave_one_out", "token"),
        (GRAEReinforceConfig, "parallel", "none", "sequence"),
    ],
)
def test_presets_train_with_their_settings(ray_session, config_cls, order, norm, ratio):
    config = bandit_config(config_cls)
    assert (config.update_order, config.advantage_norm, config.ratio_level) == (order, norm, ratio)
    algo = config.build_algo()
    try:
        before = _table(algo)
        stats = algo.train()["learners"][SHARED_MODULE_ID]
        assert stats["all_turns"]["rows"] == 48  # one update on every turn's rows
        assert not torch.allclose(before, _table(algo))
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "field, value",
    [
        ("update_order", "backwards"),
        ("advantage_norm", "per_group"),
        ("ratio_level", "word"),
        ("compound_factor", "product"),
        ("group_size", 1),
        ("tasks_per_iteration", 0),
        ("clip_param", -0.1),
        ("compound_clip", 1.5),
        ("kl_coeff", -1.0),
        ("num_epochs_per_turn", 0),
        ("old_policy", "behaviour"),
        ("max_turns", 0),
        ("num_epochs", 4),
    ],
)
def test_validate_names_the_bad_field(field, value):
    config = bandit_config(**{field: value})
    with pytest.raises(ValueError, match=f"SeeUPOConfig.{field}"):
        config.validate()


# Seed 0 in the default suite (15 s), seeds 1 and 2 as well with -m slow.
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_sample_based_seeupo_reaches_the_optimum(ray_session, seed):
    """docs/design.md section 1.7: full-observation needle instances, fixed budget of 40 iterations
    (every seed of 0-2 is at J/J* 0.996 there, 0.998 at 60)."""
    env_config = {"num_turns": 3, "num_actions": 3, "num_contexts": 1, "kind": "needle", "seed": seed}
    algo = bandit_config(env_config=env_config, group_size=8, tasks_per_iteration=8, kl_coeff=0.0).debugging(seed=seed).build_algo()
    try:
        for _ in range(40):
            result = algo.train()
    finally:
        algo.stop()
    assert result["optimality_ratio"] >= 0.99, result["optimality_ratio"]


def test_scale_out_remote_env_runners_and_two_ddp_learners(ray_session):
    config = (
        bandit_config(group_size=4, tasks_per_iteration=4, kl_coeff=0.0)
        .env_runners(num_env_runners=2)
        .learners(num_learners=2)
    )
    algo = config.build_algo()
    try:
        first = algo.train()
        # Env runner 1 dies in the next iteration: its two tasks are sampled again on runner 2.
        algo.env_runner_group.foreach_env_runner(_crash_at_next_episode(1), local_env_runner=False)
        result = algo.train()
        assert result["rollouts"]["retried_groups"] == 2 and result["rollouts"]["num_groups"] == 4
        for _ in range(3):
            result = algo.train()
        stats = result["learners"][SHARED_MODULE_ID]
        assert {"turn_0", "turn_1", "turn_2"} <= set(stats)
        assert result["rollouts"]["num_rollouts"] == 16  # 4 tasks x 4, split over 2 runners
        assert result["rollouts"]["dropped_rollouts"] == 0
        assert result["optimality_ratio"] > first["optimality_ratio"]
        # Both learners hold the same weights after DDP updates.
        weights = algo.learner_group.foreach_learner(
            lambda learner: learner.module[SHARED_MODULE_ID].unwrapped().logits.detach().numpy().copy()
        )
        tables = [w.get() for w in weights]
        assert len(tables) == 2 and np.allclose(tables[0], tables[1])
    finally:
        algo.stop()


def _crash_at_next_episode(index: int | None):
    """A function for ``foreach_env_runner`` that makes runner ``index``'s process exit (as a
    crash would) when its next episode starts; it returns ``(worker index, pid)``. A closure,
    so Ray pickles it by value (the workers cannot import this test module)."""

    def arm(env_runner):
        import os

        from rllib_seeupo.rollouts import turn_envs

        if env_runner.worker_index == index:
            for sub_env in turn_envs(env_runner):
                sub_env.reset = lambda *args, **kwargs: os._exit(1)
        return env_runner.worker_index, os.getpid()

    return arm


@pytest.mark.slow
def test_a_run_whose_only_env_runner_dies_waits_for_its_restart(ray_session):
    """The one env runner's process dies while sampling: the iteration waits for RLlib to
    restart it (a new process, given the current weights) and samples every group there."""
    config = bandit_config(group_size=4, tasks_per_iteration=4, kl_coeff=0.0).env_runners(num_env_runners=1)
    assert config.restart_failed_env_runners  # RLlib's default
    algo = config.build_algo()
    try:
        assert algo.train()["rollouts"]["retried_groups"] == 0
        [(_, pid)] = algo.env_runner_group.foreach_env_runner(_crash_at_next_episode(1), local_env_runner=False)
        result = algo.train()
        assert result["rollouts"]["retried_groups"] == 4  # every task, after the restart
        assert result["rollouts"]["num_groups"] == 4 and result["rollouts"]["num_rollouts"] == 16
        [(_, new_pid)] = algo.env_runner_group.foreach_env_runner(_crash_at_next_episode(None), local_env_runner=False)
        assert new_pid != pid, "the env runner was not restarted"
        # The restarted runner holds the learner's weights (restore_env_runners synced them).
        learner_table = _table(algo)
        runner_table = algo.env_runner_group.foreach_env_runner(
            lambda r: r.module[SHARED_MODULE_ID].logits.detach().numpy().copy(), local_env_runner=False)[0]
        assert np.allclose(runner_table, learner_table.numpy())
        assert algo.train()["rollouts"]["retried_groups"] == 0
    finally:
        algo.stop()


def test_checkpoint_restores_weights_config_and_counters(ray_session, tmp_path):
    algo = bandit_config(kl_coeff=0.0).build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        steps = result["env_runners"]["num_env_steps_sampled_lifetime"]
        algo.save_to_path(str(tmp_path))
        table = _table(algo)
    finally:
        algo.stop()
    restored = SeeUPO.from_checkpoint(str(tmp_path))
    try:
        assert restored.iteration == 2
        assert torch.allclose(_table(restored), table)
        assert restored.config.group_size == 4 and restored.config.update_order == "reverse"
        result = restored.train()
        assert result["training_iteration"] == 3
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] > steps
    finally:
        restored.stop()


def test_tune_runs_seeupo_by_registered_name(ray_session, tmp_path):
    from ray import tune

    tuner = tune.Tuner(
        "SeeUPO",
        param_space=bandit_config(kl_coeff=0.0),
        run_config=tune.RunConfig(storage_path=str(tmp_path), stop={"training_iteration": 1}, verbose=0),
    )
    (result,) = tuner.fit()
    assert result.error is None
    assert "turn_0" in result.metrics["learners"][SHARED_MODULE_ID]


def test_single_step_fast_path_equals_explicit_old_policy_recompute(ray_session):
    """With one full-batch step per turn, pi_old is taken from the update's own forward
    pass instead of a separate recompute; both paths must give the same update."""
    tables, factors = [], []
    for minibatch_size in (None, 16):  # 16 = all rows of a turn: same step, recompute path
        torch.manual_seed(0)
        # The release's rule: the recompute path exists only under `old_policy: current`.
        algo = bandit_config(kl_coeff=0.0, minibatch_size=minibatch_size, old_policy="current",
                             compound_factor="stepwise").build_algo()
        try:
            result = algo.train()
            tables.append(_table(algo))
            factors.append(result["learners"][SHARED_MODULE_ID]["turn_0"]["compound_factor_mean"])
        finally:
            algo.stop()
    assert factors[0] != 1.0
    assert abs(factors[0] - factors[1]) < 1e-6
    assert torch.allclose(tables[0], tables[1], atol=1e-6)


def test_max_turns_leaves_later_turns_out_of_the_update(ray_session):
    algo = bandit_config(kl_coeff=0.0, max_turns=2).build_algo()
    try:
        result = algo.train()
        stats = result["learners"][SHARED_MODULE_ID]
        assert {"turn_0", "turn_1"} <= set(stats) and "turn_2" not in stats
        assert result["rollouts"]["dropped_turns"] == 16
    finally:
        algo.stop()
