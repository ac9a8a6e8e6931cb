"""RLlib's built-in PPO, unmodified, on our modules and envs: the LLM module (value head on
the prompt's last token, a response distribution) on the tool-use env, and the tabular
module on the bandit."""

import pytest
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.ppo import PPO
from ray.rllib.core.columns import Columns

from rllib_seeupo import SHARED_MODULE_ID, ppo_config
from rllib_seeupo.callbacks import BanditOptimality
from rllib_seeupo.llm.module import LLMRLModule
from rllib_seeupo.modules.distributions import ResponseDistribution
from rllib_seeupo.reporting import iteration_record

BANDIT = {"num_turns": 3, "num_actions": 3, "num_contexts": 1, "kind": "needle", "observation": "full", "seed": 0}
PPO_LEARNER_METRICS = ("policy_loss", "vf_loss", "vf_explained_var", "entropy", "mean_kl_loss", "total_loss")


def test_response_distribution_reads_logp_and_entropy_and_estimates_kl():
    behaviour = ResponseDistribution.from_logits(torch.tensor([[-3.0], [-1.0]]))
    current = ResponseDistribution.from_logits(torch.tensor([[-2.0, 0.5], [-1.0, 0.7]]))
    assert torch.equal(current.logp("any text"), torch.tensor([-2.0, -1.0]))
    assert torch.equal(current.entropy(), torch.tensor([0.5, 0.7]))
    kl = behaviour.kl(current)  # k3: r - 1 - log r, r = current / behaviour
    assert torch.allclose(kl, torch.tensor([torch.e - 2.0, 0.0]))
    with pytest.raises(ValueError, match="no entropy"):
        behaviour.entropy()
    with pytest.raises(NotImplementedError):
        current.sample()


def _learner_module(algo):
    return algo.learner_group._learner.module[SHARED_MODULE_ID]


def test_ppo_trains_the_llm_module_with_lora(ray_session, tiny_model, tmp_path):
    config = (
        ppo_config(
            "seeupo/tool_tasks",
            # The random tiny model never succeeds: the parse penalty makes rewards differ.
            env_config={"max_turns": 3, "parse_error_penalty": 0.1},
            module_class=LLMRLModule,
            model_config={
                "model": tiny_model, "max_new_tokens": 8, "response_prefix": "[", "stop_strings": ["]"],
                "lora": {"rank": 4, "init": False},
            },
        )
        .env_runners(num_envs_per_env_runner=4)
        .training(lr=1e-2, train_batch_size_per_learner=16, minibatch_size=8, num_epochs=2)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    assert type(algo) is PPO
    try:
        module = _learner_module(algo)
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        assert {"value_head.weight", "value_head.bias"} < trainable
        assert all("lora_" in n or n.startswith("value_head.") for n in trainable)

        # The learner pipeline's batch: recomputed sequence log-probs equal the recorded
        # ones (ratio 1 before any update), and values from the observations equal values
        # from the training forward's embeddings (one prompt, two code paths).
        learner = algo.learner_group._learner
        episodes = algo.env_runner.sample(num_episodes=4, random_actions=False)
        batch = learner._learner_connector(
            rl_module=learner.module, batch={}, episodes=episodes, shared_data={}, metrics=learner.metrics
        )[SHARED_MODULE_ID]
        with torch.no_grad():
            out = module.forward_train(batch)
            mask = batch[Columns.LOSS_MASK]
            recomputed = out[Columns.ACTION_DIST_INPUTS][mask, 0]
            assert torch.allclose(recomputed, batch[Columns.ACTION_LOGP][mask], atol=1e-3)
            module.value_head.weight.normal_()  # zero-initialised: make values informative
            from_embeddings = module.compute_values(batch, embeddings=out[Columns.EMBEDDINGS])[mask]
            from_observations = module.compute_values({Columns.OBS: batch[Columns.OBS]})[mask]
            assert from_embeddings.std() > 0
            assert torch.allclose(from_embeddings, from_observations, atol=1e-4)
            module.value_head.weight.copy_(before["value_head.weight"])

        for _ in range(2):
            result = algo.train()
        stats = result["learners"][SHARED_MODULE_ID]
        for key in PPO_LEARNER_METRICS:
            assert key in stats, key
        assert stats["vf_loss"] > 0
        # The episode success rate, as SeeUPO reports it (the random model never succeeds).
        assert iteration_record(result)["rollouts/success_rate"] == 0.0
        after = {n: p.detach().clone() for n, p in module.named_parameters()}
        for name in before:
            changed = not torch.equal(before[name], after[name])
            assert changed == (name in trainable), name  # base weights untouched
        # The env runner's module has no value head and got the new adapter weights.
        runner = algo.get_module(SHARED_MODULE_ID)
        assert not hasattr(runner, "value_head")
        for name, p in runner.named_parameters():
            if name in trainable:
                assert torch.equal(p, after[name]), name
        algo.save_to_path(str(tmp_path))
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(str(tmp_path))
    try:
        again = {n: p.detach() for n, p in _learner_module(restored).named_parameters()}
        for name in trainable:
            assert torch.equal(again[name], after[name]), name
    finally:
        restored.stop()


def test_ppo_trains_the_tabular_module_on_the_bandit(ray_session):
    config = (
        ppo_config("seeupo/bandit", env_config=BANDIT)
        .training(lr=0.1, train_batch_size_per_learner=192, minibatch_size=64, num_epochs=4)
        .callbacks(BanditOptimality)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        module = _learner_module(algo)
        values_before = module.values.detach().clone()
        ratios = [algo.train()["optimality_ratio"] for _ in range(8)]
        result = algo.train()
        # RLlib's PPO steps once per minibatch of 64 rows, in every epoch.
        assert result["optimizer_steps"] == result["learners"][SHARED_MODULE_ID]["num_module_steps_trained_lifetime"] / 64
        result_stats = result["learners"][SHARED_MODULE_ID]
        for key in PPO_LEARNER_METRICS:
            assert key in result_stats, key
        # The value table learned E[R | state] of the visited states (team rewards in [0, 1]).
        moved = (module.values.detach() - values_before).abs()
        assert moved.max() > 0.2
        assert ratios[-1] > ratios[0] + 0.2 and ratios[-1] > 0.8, ratios
    finally:
        algo.stop()


@pytest.mark.parametrize("share", [False, True])
def test_value_loss_reaches_the_llm_only_with_vf_share_layers(tiny_model, share):
    import numpy as np
    from envs.text import AnyText
    from envs.tool_tasks import env as tool_env
    from rllib_seeupo.llm.module import PROMPT_IDS, RESPONSE_IDS
    from rllib_seeupo.modules.api import BEHAVIOUR_LOGP

    module = LLMRLModule(
        observation_space=AnyText(10**6), action_space=AnyText(4000),
        model_config={"model": tiny_model, "max_new_tokens": 6, "lora": {"rank": 4, "init": False}, "vf_share_layers": share},
    )
    e, observations = tool_env(), []
    for task in range(4):
        e.reset(options={"task_id": task})
        observations.append(e.observe("turn_0"))
    torch.manual_seed(0)
    sampled = module._forward_exploration({Columns.OBS: np.array(observations, dtype=object)})
    rows = [{k: sampled[k][i] for k in (PROMPT_IDS, RESPONSE_IDS, BEHAVIOUR_LOGP)} for i in range(4)]
    batch = {k: torch.as_tensor(v) for k, v in LLMRLModule.collate_turn_rows(rows).items()}
    batch[Columns.LOSS_MASK] = torch.tensor([True, True, False, True])
    out = module.forward_train(batch)
    dist = out[Columns.ACTION_DIST_INPUTS]
    # The row the loss masks out is not run (zeros); the others carry the sampled log-probs.
    assert torch.equal(dist[2], torch.zeros(2)) and torch.equal(out[Columns.EMBEDDINGS][2], torch.zeros_like(out[Columns.EMBEDDINGS][2]))
    kept = torch.tensor([0, 1, 3])
    assert torch.allclose(dist[kept, 0], torch.as_tensor(sampled[Columns.ACTION_LOGP])[kept], atol=1e-3)
    assert (dist[kept, 1] > 0).all()  # mean per-token entropy
    with torch.no_grad():
        module.value_head.weight.normal_()  # zero-initialised: no gradient would reach the LLM
    (module.compute_values(batch, embeddings=out[Columns.EMBEDDINGS])[kept] - 1.0).pow(2).sum().backward()
    assert module.value_head.weight.grad.abs().sum() > 0
    lora_grads = [p.grad for n, p in module.named_parameters() if "lora_" in n]
    reached = any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert reached == share
