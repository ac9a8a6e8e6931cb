"""GiGPO (Feng et al. 2025) built from our pieces: the step-level advantage over anchor
states, checked on the bandit where the anchor groups are known by construction, and
training on the bandit and the embedded env."""

import collections

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from rllib_seeupo import GiGPOConfig, objectives
from rllib_seeupo.algorithm import TURN_ADVANTAGE
from test_algorithm import bandit_config


def test_discounted_turn_returns_discount_the_terminal_reward():
    returns = objectives.discounted_turn_returns(
        torch.tensor([1.0, 1.0, 1.0, 2.0]), torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 2, 0]), 0.5
    )
    assert torch.allclose(returns, torch.tensor([0.25, 0.5, 1.0, 2.0]))


def test_gigpo_adds_the_anchor_groups_centred_returns():
    episode = torch.tensor([0.5, -0.5, 0.5, -0.5, 1.0])
    returns = torch.tensor([1.0, 0.0, 0.5, 0.25, 3.0])
    anchors = torch.tensor([0, 0, 1, 1, 2])  # the last row is alone in its anchor group
    got = objectives.gigpo_advantages(episode, returns, anchors, weight=2.0)
    assert torch.allclose(got, torch.tensor([0.5 + 1.0, -0.5 - 1.0, 0.5 + 0.25, -0.5 - 0.25, 1.0]))
    std = objectives.gigpo_advantages(episode, returns, anchors, weight=1.0, norm="group_std")
    # Each anchor group of two, centred and over its (unbiased) std: +-1/sqrt(2).
    assert torch.allclose(std[:4] - episode[:4], torch.tensor([1, -1, 1, -1]) / 2**0.5, atol=1e-5)


def _expected(rollouts, episode_advantages, gamma, weight, anchor_of):
    """Each (rollout, turn)'s advantage computed by hand from the actions taken."""
    groups = collections.defaultdict(list)
    for i, r in enumerate(rollouts):
        last = max(r.turns)
        for k in r.turns:
            groups[anchor_of(r, k)].append((i, k, gamma ** (last - k) * r.reward))
    expected = {}
    for members in groups.values():
        mean = np.mean([g for _, _, g in members])
        for i, k, g in members:
            expected[(i, k)] = episode_advantages[i] + weight * (g - mean)
    return expected


@pytest.mark.parametrize("observation", ["full", "partial"])
def test_step_advantages_follow_the_anchor_states_of_the_bandit(ray_session, observation):
    """With full observation a turn sees its context and the actions before it, so the
    anchor group of turn k is the task's rollouts with the same first k actions; with partial
    observation only the context and k, so every rollout of the task shares it."""
    env = {"num_turns": 3, "num_actions": 3, "num_contexts": 2, "kind": "random", "observation": observation, "seed": 1}
    algo = bandit_config(GiGPOConfig, env_config=env, group_size=8, tasks_per_iteration=2, step_discount=0.9).build_algo()
    try:
        rollouts, advantages = algo.sample_rollouts(np.random.default_rng(0))
        stats = algo.metrics.peek("rollouts")
    finally:
        algo.stop()
    assert len(rollouts) == 16 and len({repr(r.task_id) for r in rollouts}) == 2
    # The episode-level part is GiGPO's: centred, no std.
    rewards = np.array([r.reward for r in rollouts])
    tasks = np.array([repr(r.task_id) for r in rollouts])
    centred = rewards - np.array([rewards[tasks == t].mean() for t in tasks])
    assert np.allclose(advantages, centred, atol=1e-6)

    def prefix(r, k):
        return tuple(int(np.asarray(r.turns[j][Columns.ACTIONS])) for j in range(k))

    if observation == "full":
        def anchor_of(r, k):
            return repr(r.task_id), k, prefix(r, k)
    else:
        def anchor_of(r, k):
            return repr(r.task_id), k

    expected = _expected(rollouts, advantages, 0.9, 1.0, anchor_of)
    got = {(i, k): r.turns[k][TURN_ADVANTAGE] for i, r in enumerate(rollouts) for k in r.turns}
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    # Turn 0's anchor is the task itself: its step term is the episode's centred reward, discounted.
    assert stats["anchor_groups"] == len({anchor_of(r, k) for r in rollouts for k in r.turns})
    shared = 1.0 if observation == "partial" else stats["shared_anchor_rows"]
    assert 0 < shared <= 1.0


def test_gigpo_trains_on_the_bandit(ray_session):
    env = {"num_turns": 3, "num_actions": 3, "num_contexts": 1, "kind": "needle", "seed": 0}
    algo = bandit_config(GiGPOConfig, env_config=env, group_size=8, tasks_per_iteration=8, kl_coeff=0.0).build_algo()
    try:
        first = algo.train()["optimality_ratio"]
        for _ in range(14):
            result = algo.train()
        assert result["optimality_ratio"] > first + 0.2, (first, result["optimality_ratio"])
        assert "turn_advantage" not in result  # per-row values stay in the rollouts
        assert result["rollouts"]["anchor_groups"] > 0
    finally:
        algo.stop()


def test_gigpo_trains_the_llm_on_the_embedded_env(ray_session, tiny_model):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_seeupo import SHARED_MODULE_ID
    from rllib_seeupo.llm.module import LLMRLModule
    from test_llm import GENERATION

    config = (
        GiGPOConfig()
        .environment("seeupo/tool_tasks", env_config={"max_turns": 3})
        .env_runners(num_envs_per_env_runner=4)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LLMRLModule),
                   model_config={"model": tiny_model, **GENERATION, "lora": {"rank": 4, "init": False}})
        .training(group_size=2, tasks_per_iteration=2, lr=1e-2, kl_coeff=0.01, entropy_coeff=0.01)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        module = algo.learner_group._learner.module[SHARED_MODULE_ID]
        before = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}
        result = algo.train()
        after = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}
        assert any(not torch.equal(before[n], after[n]) for n in before)
        assert result["learners"][SHARED_MODULE_ID]["all_turns"]["rows"] > 0
        # The two rollouts of a task start from the same chat: their turn 0 shares an anchor.
        assert result["rollouts"]["anchor_groups"] >= 2 and result["rollouts"]["shared_anchor_rows"] > 0
    finally:
        algo.stop()
