"""The tabular multi-turn bandit: PettingZoo API, task pinning, exact J."""

import numpy as np
import pytest
from pettingzoo.test import api_test

from envs import bandit


@pytest.mark.parametrize("observation", ["full", "partial"])
def test_pettingzoo_api(observation):
    api_test(bandit.env(observation=observation, num_contexts=3), num_cycles=20)


def _play(env, actions, task_id):
    env.reset(options={"task_id": task_id})
    seen = []
    for agent in env.agent_iter():
        obs, reward, terminated, truncated, info = env.last()
        assert info["task_id"] == task_id
        if terminated or truncated:
            env.step(None)
            seen.append((agent, reward))
            continue
        env.step(actions[int(agent.split("_")[1])])
    return seen


def test_task_pinning_infos_and_shared_final_reward():
    env = bandit.env(num_turns=3, num_actions=3, num_contexts=4, kind="random", seed=3)
    inst = env.instance
    finals = _play(env, [2, 0, 1], task_id=2)
    assert [a for a, _ in finals] == ["turn_0", "turn_1", "turn_2"]
    assert all(r == pytest.approx(inst.reward(2, [2, 0, 1])) for _, r in finals)


def test_observations_encode_history_or_turn_only():
    full = bandit.make_instance(num_turns=3, num_actions=2, num_contexts=2, observation="full")
    ids = {full.state_id(c, p) for c in range(2) for p in [(), (0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]}
    assert ids == set(range(full.num_states))
    partial = bandit.make_instance(num_turns=3, num_actions=2, num_contexts=2, observation="partial")
    assert partial.state_id(1, (0, 1)) == partial.state_id(1, (1, 1)) == 5


def test_needle_instances_are_deceptive():
    for seed in range(5):
        inst = bandit.make_instance(num_turns=4, num_actions=3, kind="needle", seed=seed)
        best_first = inst.optimal_sequences()[0, 0]
        rewards, first = inst.rewards[0], inst.sequences[:, 0]
        uniform_value = [rewards[first == a].mean() for a in range(3)]
        assert int(np.argmax(uniform_value)) != best_first
        assert inst.optimal_objective() == 1.0


def test_exact_objective_matches_monte_carlo():
    env = bandit.env(num_turns=3, num_actions=3, num_contexts=2, kind="random", seed=1)
    inst = env.instance
    rng = np.random.default_rng(0)
    policy = rng.dirichlet(np.ones(3), size=inst.num_states)
    returns = []
    for episode in range(4000):
        env.reset(seed=episode if episode == 0 else None)
        for agent in env.agent_iter():
            obs, reward, terminated, truncated, _ = env.last()
            if terminated or truncated:
                if agent == "turn_0":
                    returns.append(reward)
                env.step(None)
            else:
                env.step(int(rng.choice(3, p=policy[int(obs)])))
    assert np.mean(returns) == pytest.approx(inst.objective(policy), abs=0.02)
    assert inst.optimal_objective() == pytest.approx(inst.rewards.max(axis=1).mean())


def test_bad_config_and_task_fail_clearly():
    with pytest.raises(ValueError, match="kind"):
        bandit.env(kind="bogus")
    with pytest.raises(ValueError, match="task_id"):
        bandit.env(num_contexts=2).reset(options={"task_id": 5})
