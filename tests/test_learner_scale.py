"""The learner at scale, checked on the tiny model: a turn update run in micro-batches of a
token budget takes the step of the one-pass update, and several learners take the step of
one learner."""

import numpy as np
import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.text import AnyText
from rllib_seeupo import SHARED_MODULE_ID, SeeUPOConfig
from rllib_seeupo.learner import ADVANTAGES, COMPOUND_FACTOR, MINIBATCH_ROWS, OLD_LOGP, TURN
from rllib_seeupo.llm.module import PROMPT_IDS, PROMPT_MASK, RESPONSE_IDS, LLMRLModule
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK
from test_llm import GENERATION, _observations

SPACES = (AnyText(10**6), AnyText(4000))


def _learner(path, lora=None, **training):
    config = (
        SeeUPOConfig()
        .environment(observation_space=SPACES[0], action_space=SPACES[1])
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LLMRLModule), model_config={"model": path, **GENERATION, "lora": lora})
        .training(kl_coeff=0.01, entropy_coeff=0.01, **training)
    )
    return config.build_learner(env=None, spaces={SHARED_MODULE_ID: SPACES})


def _turn_batch(module, n: int) -> dict[str, torch.Tensor]:
    """``n`` sampled responses with random advantages, M and a perturbed pi_old; the last
    row has no response (it counts nowhere)."""
    torch.manual_seed(0)
    out = module._forward_exploration({"obs": np.array(_observations(n), dtype=object)})
    rows = [{PROMPT_IDS: out[PROMPT_IDS][i], RESPONSE_IDS: out[RESPONSE_IDS][i], BEHAVIOUR_LOGP: out[BEHAVIOUR_LOGP][i]} for i in range(n)]
    rows[-1] = {**rows[-1], RESPONSE_IDS: np.zeros(0, np.int64), BEHAVIOUR_LOGP: np.zeros(0, np.float32)}
    columns = LLMRLModule.collate_turn_rows(rows)
    rng = np.random.default_rng(0)
    columns[OLD_LOGP] = columns[BEHAVIOUR_LOGP] + rng.normal(0, 0.1, columns[BEHAVIOUR_LOGP].shape).astype(np.float32)
    columns[ADVANTAGES] = rng.normal(size=n).astype(np.float32)
    columns[COMPOUND_FACTOR] = rng.uniform(0.8, 1.2, n).astype(np.float32)
    columns[TURN] = np.zeros(n, np.int64)
    return {k: torch.as_tensor(v) for k, v in columns.items()}


def _gradient(learner, batch) -> torch.Tensor:
    """The flat gradient of one update on ``batch`` (the step itself is not taken)."""
    learner.apply_gradients = lambda gradients: None
    learner._uncompiled_update({SHARED_MODULE_ID: batch})
    return torch.cat([p.grad.flatten() for p in learner._params.values() if p.grad is not None])


@pytest.mark.parametrize("lora", [None, {"rank": 4, "init": False}], ids=["full", "lora"])
def test_micro_batch_gradients_equal_the_one_pass_gradient(tiny_model, lora):
    torch.manual_seed(0)
    one_pass = _learner(tiny_model, lora=lora)
    torch.manual_seed(0)  # the same LoRA initialisation
    micro = _learner(tiny_model, lora=lora, micro_batch_tokens=450)
    module = one_pass.module[SHARED_MODULE_ID]
    batch = _turn_batch(module, 7)
    tokens = (batch[PROMPT_MASK].sum(-1) + batch[RESPONSE_MASK].sum(-1)).tolist()
    assert max(tokens) <= 450 < sum(tokens) // 2, tokens  # at least three micro-batches
    expected = _gradient(one_pass, batch)
    got = _gradient(micro, batch)
    assert expected.norm() > 0
    assert ((got - expected).norm() / expected.norm()) < 1e-6
    # The logged figures are the minibatch's, not the last micro-batch's.
    def logged(learner, key):
        return float(learner.metrics.peek((SHARED_MODULE_ID, "turn_0", key)))

    assert logged(micro, "rows") == logged(one_pass, "rows") == 6
    for key in ("policy_loss", "kl_old", "entropy", "kl", "total_loss"):
        assert logged(micro, key) == pytest.approx(logged(one_pass, key), rel=1e-5, abs=1e-7), key
    # The no-grad passes within the budget give the same log-probs.
    columns = {k: v.numpy() for k, v in batch.items()}
    assert np.allclose(micro.compute_response_logp(SHARED_MODULE_ID, columns),
                       one_pass.compute_response_logp(SHARED_MODULE_ID, columns), atol=1e-6)
