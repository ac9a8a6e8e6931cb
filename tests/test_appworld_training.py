"""AppWorld through the full RLlib path: one SeeUPO iteration of a scripted text policy on
the fake server's tasks, and the tuned example's settings."""

from pathlib import Path

import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from fake_appworld import SPLITS, fake_servers
from rllib_seeupo import SHARED_MODULE_ID, SeeUPOConfig
from rllib_seeupo.experiment import build_config, load_experiment
from scripted_module import ScriptedChoiceRLModule

ROOT = Path(__file__).resolve().parents[1]


def test_one_seeupo_iteration_on_the_fake_appworld_tasks(ray_session, tmp_path):
    # Choice 0 solves a task in two turns (reward 1.5), choice 1 gives up with a wrong
    # answer that passes half of the tests (reward 0.5 x 1/2); one server per sub-env.
    with fake_servers(4) as servers:
        env_config = {"server_urls": [s.url for s in servers], "task_ids": SPLITS, "max_turns": 3,
                      "lock_dir": str(tmp_path / "locks")}
        config = (
            SeeUPOConfig()
            .environment("seeupo/appworld", env_config=env_config)
            .env_runners(num_envs_per_env_runner=4)
            .rl_module(rl_module_spec=RLModuleSpec(module_class=ScriptedChoiceRLModule),
                       model_config={"script": "fake_appworld.solution_response", "init_logits": [1.0, 0.0]})
            .training(group_size=4, tasks_per_iteration=2, lr=0.5, kl_coeff=0.0)
            .debugging(seed=0)
        )
        algo = config.build_algo()
        try:
            before = algo.get_module(SHARED_MODULE_ID).logits.detach().clone()
            result = algo.train()
            after = algo.get_module(SHARED_MODULE_ID).logits.detach().clone()
        finally:
            algo.stop()
        executed = sum(name == "execute" for s in servers for name, _ in s.requests)
    rollouts = result["rollouts"]
    assert rollouts["num_rollouts"] == 8 and rollouts["truncated_rate"] == 0.0
    success = rollouts["success_rate"]
    assert 0.0 < success < 1.0, "the seed should give both outcomes"
    assert rollouts["reward_mean"] == pytest.approx(1.5 * success + 0.25 * (1 - success))
    assert rollouts["parse_error_rate"] == 0.0 and executed >= 8
    stats = result["learners"][SHARED_MODULE_ID]
    assert stats["turn_0"]["rows"] == 8 and stats["turn_1"]["rows"] > 0
    # Solving was rewarded: the update raised the solving choice against giving up.
    assert (after[0] - after[1]) > (before[0] - before[1])
    assert not torch.equal(before, after)


def test_appworld_tuned_example_loads_and_validates():
    experiment = load_experiment(ROOT / "tuned_examples" / "appworld_seeupo_qwen3_14b.yaml")
    assert experiment.env == "seeupo/appworld" and experiment.run == "SeeUPO"
    config = build_config(experiment)
    config.validate()
    assert config.lr == 1e-5 and config.model_config["lora"]["rank"] == 64  # LoRA on one GPU
    assert config.tasks_per_iteration == 32 and config.group_size == 8
    assert config.kl_coeff == 0.002 and config.clip_param == 0.2 and config.compound_clip == 0.2
    assert (config.old_policy, config.compound_factor, config.advantage_clip_mode) == ("current", "stepwise", "clamp")
    assert config.skip_zero_advantage_updates is False
    assert config.env_config["max_turns"] == 10
    assert config.model_config["model"] == "hf:Qwen/Qwen3-14B" and config.model_config["temperature"] == 0.9
    # One AppWorld server per parallel env.
    parallel = max(1, config.num_env_runners) * config.num_envs_per_env_runner
    assert len(config.env_config["server_urls"]) == parallel
    assert experiment.evaluation["split"] == "test_normal"
