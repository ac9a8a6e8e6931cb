"""examples/custom_env.py: a user's own turn env, registered with ``register_turn_env``,
passes PettingZoo's API test, is solved by a scripted policy that reads the tool's reply and
trains with SeeUPO on the tiny model."""

import importlib.util
from pathlib import Path

import pytest
import torch
from pettingzoo.test import api_test

from rllib_seeupo import SHARED_MODULE_ID, register_turn_env
from rllib_seeupo.experiment import ConfigError, check_env
from rllib_seeupo.turn_env import make_turn_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_env.py"


@pytest.fixture(scope="module")
def custom_env():
    spec = importlib.util.spec_from_file_location("custom_env", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_env_passes_the_api_test_and_needs_the_tool_reply(custom_env):
    api_test(custom_env.env(), num_cycles=5)
    env = custom_env.env()
    for task_id in custom_env.SPLITS["test"][:5]:
        env.reset(options={"task_id": task_id})
        env.step(f"[open_locker(number={env.locker})]")
        env.step(f'[answer(code="{env.messages[-1]["content"]}")]')  # the code the tool returned
        assert env.rewards["turn_1"] == 1.0 and env.infos["turn_0"]["task_id"] == task_id
        env.reset(options={"task_id": task_id})
        env.step('[answer(code="AAAA")]')  # blind
        assert env.rewards["turn_0"] == 0.0 or env.code == "AAAA"


def test_register_turn_env_makes_the_name_known_everywhere(custom_env):
    assert register_turn_env("lockers_test", custom_env.env) == "seeupo/lockers_test"
    assert len(make_turn_env("lockers_test", {"max_turns": 2}).task_ids("test")) == 100
    assert check_env("seeupo/lockers_test", {"max_turns": 2}, splits={"evaluation.split": "test"}) is not None
    with pytest.raises(ConfigError, match="unknown env_config key 'turns'.*allowed: max_turns"):
        check_env("seeupo/lockers_test", {"turns": 2})
    with pytest.raises(ConfigError, match="no tasks|splits"):
        check_env("seeupo/lockers_test", {}, splits={"evaluation.split": "dev"})
    with pytest.raises(ValueError, match="name must be"):
        register_turn_env("a/b", custom_env.env)
    with pytest.raises(ValueError, match="built-in env's name"):
        register_turn_env("tool_tasks", custom_env.env)
    register_turn_env("lockers_missing", "no_such_package.envs:env")
    with pytest.raises(ConfigError, match="seeupo/lockers_missing: its env function 'no_such_package.envs:env' cannot be imported"):
        check_env("seeupo/lockers_missing", {})


def test_the_example_trains_an_iteration_on_the_tiny_model(ray_session, tiny_model, custom_env):
    config = custom_env.lockers_config(tiny_model, num_eval_tasks=4, group_size=2, tasks_per_iteration=2, entropy_coeff=0.01)
    config.rl_module(model_config={**config.model_config, "max_new_tokens": 12})
    algo = config.build_algo()
    try:
        module = algo.learner_group._learner.module[SHARED_MODULE_ID]
        before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        result = algo.train()
        after = dict(module.named_parameters())
        assert result["rollouts"]["num_rollouts"] == 4
        assert 0.0 <= result["evaluation_before"]["success_rate"] <= 1.0
        assert 0.0 <= result["evaluation"]["success_rate"] <= 1.0
        assert any(not torch.equal(before[n], after[n]) for n in before if "lora_" in n)
    finally:
        algo.stop()
