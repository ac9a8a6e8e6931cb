"""Resumable means reproducible: a run restored from its checkpoint at iteration i goes on
exactly as the uninterrupted run would (same per-iteration metrics, same final weights,
bit for bit), on the bandit (the tuned example) and with the LLM module on a tiny model."""

from pathlib import Path

import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_seeupo import SHARED_MODULE_ID, SeeUPO, SeeUPOConfig
from rllib_seeupo.experiment import build_config, load_experiment
from rllib_seeupo.learner_calls import learner_call
from rllib_seeupo.llm.module import LLMRLModule
from rllib_seeupo.reporting import iteration_record

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS, RESTORE_AT = 4, 2
# Wall-clock figures differ between any two runs; everything else must match exactly.
UNTIMED = ("time", "timer", "throughput", "per_s")


def _learning_record(result) -> dict[str, float]:
    record = iteration_record(result)
    return {k: v for k, v in record.items() if not any(word in k.lower() for word in UNTIMED)}


def _weights(algo) -> dict[str, torch.Tensor]:
    """The learner's module state (every parameter and buffer), local or remote learner."""
    return learner_call(algo.learner_group,
        lambda learner: {k: v.detach().cpu().clone() for k, v in learner.module[SHARED_MODULE_ID].unwrapped().state_dict().items()}
    )


def _train(algo, n: int) -> list[dict[str, float]]:
    return [_learning_record(algo.train()) for _ in range(n)]


def _assert_resume_reproduces(config, tmp_path, sampled_key: str):
    # The straight run saves a checkpoint on its way (which must not change its course) ...
    algo = config.build_algo()
    try:
        straight = _train(algo, RESTORE_AT)
        algo.save_to_path(str(tmp_path))
        straight += _train(algo, ITERATIONS - RESTORE_AT)
        straight_weights = _weights(algo)
    finally:
        algo.stop()
    # ... and a new algorithm restored from it continues as the straight run did.
    resumed = straight[:RESTORE_AT]
    algo = SeeUPO.from_checkpoint(str(tmp_path))
    try:
        assert algo.iteration == RESTORE_AT
        resumed += _train(algo, ITERATIONS - RESTORE_AT)
        resumed_weights = _weights(algo)
    finally:
        algo.stop()

    assert any(k.startswith("learners/") for k in straight[-1]), sorted(straight[-1])
    # The rollouts do differ from iteration to iteration (the comparison is not vacuous).
    assert len({r[sampled_key] for r in straight}) > 1, [r[sampled_key] for r in straight]
    for i, (a, b) in enumerate(zip(straight, resumed), start=1):
        assert set(a) == set(b), (i, set(a) ^ set(b))
        differing = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        assert not differing, f"iteration {i}: {differing}"
    assert set(straight_weights) == set(resumed_weights)
    for name, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[name]), name


@pytest.mark.parametrize("learner", ["local", "remote"])
def test_bandit_resumed_from_a_checkpoint_continues_as_the_straight_run(ray_session, tmp_path, learner):
    config = build_config(load_experiment(ROOT / "tuned_examples" / "bandit_seeupo.yaml"))
    assert config.seed == 0
    if learner == "remote":
        # A learner in an actor of its own (whose global RNGs the sampling never touches)
        # that shuffles minibatches over several epochs.
        config.learners(num_learners=1).training(num_epochs_per_turn=2, minibatch_size=16)
    _assert_resume_reproduces(config, tmp_path, "reward_mean")


def test_llm_resumed_from_a_checkpoint_continues_as_the_straight_run(ray_session, tiny_model, tmp_path):
    # Several epochs of shuffled minibatches and LoRA dropout: the learner draws random
    # numbers too, not only the rollouts. The random model never calls a tool correctly
    # (its reward is the parse penalty, the same for every rollout), so the entropy bonus
    # is what makes the update depend on the sampled tokens.
    config = (
        SeeUPOConfig()
        .environment("seeupo/tool_tasks", env_config={"max_turns": 2, "parse_error_penalty": 0.1})
        .env_runners(num_envs_per_env_runner=4)
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=LLMRLModule),
            model_config={
                "model": tiny_model, "max_new_tokens": 8, "response_prefix": "[", "stop_strings": ["]"],
                "lora": {"rank": 4, "init": False, "dropout": 0.1},
            },
        )
        .training(group_size=2, tasks_per_iteration=2, lr=1e-2, kl_coeff=0.01, entropy_coeff=0.01,
                  num_epochs_per_turn=2, minibatch_size=2)
        .debugging(seed=0)
    )
    _assert_resume_reproduces(config, tmp_path, "rollouts/response_tokens")
