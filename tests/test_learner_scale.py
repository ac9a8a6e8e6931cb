"""The learner at scale, checked on the tiny model: a turn update run in micro-batches of a
token budget takes the step of the one-pass update, and several learners take the step of
one learner."""

import numpy as np
import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.text import AnyText
from rllib_seeupo import SHARED_MODULE_ID, SeeUPOConfig
from rllib_seeupo.learner import ADVANTAGES, COMPOUND_FACTOR, OLD_LOGP, TURN
from rllib_seeupo.llm.module import PROMPT_IDS, PROMPT_MASK, RESPONSE_IDS, LLMRLModule
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK
from test_llm import GENERATION, _observations

SPACES = (AnyText(10**6), AnyText(4000))


def _learner(path, lora=None, model_config=None, **training):
    config = (
        SeeUPOConfig()
        .environment(observation_space=SPACES[0], action_space=SPACES[1])
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LLMRLModule),
                   model_config={"model": path, **GENERATION, "lora": lora, **(model_config or {})})
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


@pytest.mark.parametrize("lora", [None, {"rank": 4, "init": False}], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_gradient_without_it(tiny_model, lora):
    torch.manual_seed(0)
    plain = _learner(tiny_model, lora=lora)
    torch.manual_seed(0)
    checkpointed = _learner(tiny_model, lora=lora, model_config={"gradient_checkpointing": True})
    batch = _turn_batch(plain.module[SHARED_MODULE_ID], 5)
    expected = _gradient(plain, batch)
    got = _gradient(checkpointed, batch)
    # The training forward ran with checkpointing active (train mode), the other without.
    base = checkpointed.module[SHARED_MODULE_ID].model.get_base_model() if lora else checkpointed.module[SHARED_MODULE_ID].model
    assert base.training and base.is_gradient_checkpointing
    assert not plain.module[SHARED_MODULE_ID].model.is_gradient_checkpointing
    assert expected.norm() > 0
    assert ((got - expected).norm() / expected.norm()) < 1e-5


def _learner_states(algo) -> list[dict[str, torch.Tensor]]:
    """Every learner's module state (one entry for a local learner)."""
    def state(learner):
        return {k: v.detach().cpu().clone() for k, v in learner.module[SHARED_MODULE_ID].unwrapped().state_dict().items()}

    if algo.learner_group.is_local:
        return [state(algo.learner_group._learner)]
    return [r.get() for r in algo.learner_group.foreach_learner(state)]


@pytest.mark.slow
def test_several_learners_take_the_step_of_one(ray_session, tiny_model):
    """One update of the same rollouts (a turn with a single row included, minibatches that
    leave a learner without rows) on 0, 2 and 3 learners: every learner ends with the
    weights of the local learner."""
    from test_llm import _llm_config

    config = _llm_config(tiny_model, lora=None).training(
        lr=1e-3, group_size=2, tasks_per_iteration=2, minibatch_size=3
    )
    local = config.build_algo()
    try:
        rollouts, advantages = local.sample_rollouts(np.random.default_rng(0))
        turns = sorted({k for r in rollouts for k in r.turns})
        assert len(rollouts) == 4 and len(turns) >= 2
        for r in rollouts[1:]:  # the last turn keeps a single row
            r.turns.pop(turns[-1], None)
        initial = _learner_states(local)[0]
        local.update_policy(rollouts, advantages, np.random.default_rng(1))
        expected = _learner_states(local)[0]
        assert any(not torch.equal(initial[k], expected[k]) for k in expected)
    finally:
        local.stop()
    for num_learners in (2, 3):
        algo = config.copy(copy_frozen=False).learners(num_learners=num_learners).build_algo()
        try:
            algo.update_policy(rollouts, advantages, np.random.default_rng(1))
            states = _learner_states(algo)
        finally:
            algo.stop()
        assert len(states) == num_learners
        for state in states:
            for name, value in expected.items():
                assert torch.allclose(state[name], value, rtol=0, atol=1e-5), (num_learners, name, (state[name] - value).abs().max())


def test_gpu_benchmark_runs_scaled_down_without_ray(tmp_path):
    """benchmarks/gpu_scale.py and rollout_throughput.py's shared-engine mode in their CPU
    form, in a process where Ray cannot be imported: the decode loop, the packed training
    forward, the loss and the engines' batching need only torch, transformers and peft."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    block_ray = (
        "import sys, importlib.util, runpy\n"
        "sys.modules['ray'] = None\n"
        "find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == 'ray' else find(name, *a)\n"
        f"sys.argv = ['gpu_scale.py', '--tiny', '--out', {str(tmp_path / 'gpu_scale.json')!r}]\n"
        "runpy.run_path('benchmarks/gpu_scale.py', run_name='__main__')\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "sys.argv = ['rollout_throughput.py', '--runners', '2', '--live', '4', '--no-ray', '--tiny', '--turns', '2', "
        f"'--prompt-tokens', '64', '--max-new-tokens', '8', '--threads', '1', '--out', {str(tmp_path / 'shared.json')!r}]\n"
        "runpy.run_path('benchmarks/rollout_throughput.py', run_name='__main__')\n"
        "assert not any(m.startswith('ray') and sys.modules[m] is not None for m in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", block_ray], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert report["decode"]["new_tokens"] > 0 and report["decode"]["tokens_per_s"] > 0
    updates = report["turn_update"]
    assert [(u["context_tokens"], u["checkpointing"]) for u in updates] == [
        (c, on) for c in (64, 128, 256) for on in (False, True)
    ]
    assert all(u["tokens_per_s"] > 0 for u in updates)
    shared = json.loads((tmp_path / "shared.json").read_text())
    assert shared["own_engine"]["runners"] == 1 and shared["shared_engine"]["runners"] == 2
    assert shared["shared_engine"]["tokens"] > shared["own_engine"]["tokens"]  # two runners' turns
    assert shared["shared_engine"]["requests_per_engine_batch"] > 1  # the engine batched the two runners
