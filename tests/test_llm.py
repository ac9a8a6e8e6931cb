"""The LLM path on a tiny random model: token-in/token-out log-probs, one SeeUPO iteration
end to end, which parameters train, checkpoints, and truncation of over-long prompts."""

import numpy as np
import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.text import AnyText
from envs.tool_tasks import env as tool_env
from rllib_seeupo import SHARED_MODULE_ID, SeeUPO, SeeUPOConfig
from rllib_seeupo.llm.core import _output_projection_input
from rllib_seeupo.llm.module import PROMPT_IDS, RESPONSE_IDS, LLMRLModule
from rllib_seeupo.batching import consecutive_slices
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK
from rllib_seeupo.turn_env import make_turn_env

GENERATION = {"max_new_tokens": 12, "response_prefix": "[", "stop_strings": ["]"], "temperature": 1.0}


def _module(path, **config):
    return LLMRLModule(observation_space=AnyText(10**6), action_space=AnyText(4000), model_config={"model": path, **GENERATION, **config})


def _observations(n):
    e = tool_env()
    out = []
    for task in range(n):
        e.reset(options={"task_id": task})
        out.append(e.observe("turn_0"))
    return out


@pytest.mark.parametrize("lora", [None, {"rank": 4, "init": False}])
def test_recorded_logp_equals_recomputed_logp(tiny_model, lora):
    module = _module(tiny_model, lora=lora)
    torch.manual_seed(0)
    out = module._forward_exploration({"obs": np.array(_observations(6), dtype=object)})
    rows = [{PROMPT_IDS: out[PROMPT_IDS][i], RESPONSE_IDS: out[RESPONSE_IDS][i], BEHAVIOUR_LOGP: out[BEHAVIOUR_LOGP][i]} for i in range(6)]
    batch = {k: torch.as_tensor(v) for k, v in LLMRLModule.collate_turn_rows(rows).items()}
    assert len({len(r) for r in out[RESPONSE_IDS]}) > 1, "want responses of different lengths"
    recomputed = module.response_logp(batch)
    mask = batch[RESPONSE_MASK]
    assert torch.where(mask, (recomputed - batch[BEHAVIOUR_LOGP]).abs(), 0).max() < 1e-4
    # The action is the response prefix plus exactly the decoded sampled ids.
    for i, text in enumerate(out["actions"]):
        assert text == "[" + module.tokenizer.decode(out[RESPONSE_IDS][i], skip_special_tokens=True)


def _llm_config(path, **model_config):
    return (
        SeeUPOConfig()
        .environment("seeupo/tool_tasks", env_config={"max_turns": 3})
        .env_runners(num_envs_per_env_runner=4)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LLMRLModule), model_config={"model": path, **GENERATION, **model_config})
        .training(group_size=2, tasks_per_iteration=2, lr=1e-2, kl_coeff=0.01, entropy_coeff=0.01)
        .debugging(seed=0)
    )


def _learner_params(algo):
    module = algo.learner_group._learner.module[SHARED_MODULE_ID]
    return {n: p.detach().clone() for n, p in module.named_parameters()}, {n for n, p in module.named_parameters() if p.requires_grad}


def test_one_seeupo_iteration_with_lora_trains_only_the_adapter(ray_session, tiny_model, tmp_path):
    algo = _llm_config(tiny_model, lora={"rank": 4, "init": False}).build_algo()
    try:
        before, trainable = _learner_params(algo)
        result = algo.train()
        after, _ = _learner_params(algo)
        # Trainable: the adapter, and PPO's value head (which SeeUPO's loss never reads).
        assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
        for name in before:
            changed = not torch.equal(before[name], after[name])
            assert changed == (name in trainable and not name.startswith("value_head.")), name
        stats = result["learners"][SHARED_MODULE_ID]
        turns = [k for k in stats if k.startswith("turn_")]
        assert turns and all(stats[k]["rows"] > 0 for k in turns)
        assert result["rollouts"]["num_rollouts"] == 4 and result["rollouts"]["tokens_per_s"] > 0
        # The env runner got the new adapter weights.
        runner = algo.get_module(SHARED_MODULE_ID)
        for name, p in runner.named_parameters():
            if name in trainable:
                assert torch.allclose(p, after[name])
        # A checkpoint holds the adapter only and restores it.
        algo.save_to_path(str(tmp_path))
    finally:
        algo.stop()
    restored = SeeUPO.from_checkpoint(str(tmp_path))
    try:
        again, _ = _learner_params(restored)
        for name in trainable:
            assert torch.allclose(again[name], after[name])
        assert restored.train()["training_iteration"] == 2
    finally:
        restored.stop()


def test_full_finetuning_changes_weights_and_keeps_the_initial_reference(ray_session, tiny_model):
    algo = _llm_config(tiny_model, lora=None).build_algo()
    try:
        before, trainable = _learner_params(algo)
        algo.train()
        after, _ = _learner_params(algo)
        assert trainable == set(before)
        assert any(not torch.equal(before[n], after[n]) for n in trainable)
        module = algo.learner_group._learner.module[SHARED_MODULE_ID]
        for name, p in module._reference.named_parameters():
            assert torch.equal(p, before[f"model.{name}"])
    finally:
        algo.stop()


def test_prompt_too_long_ends_the_episode_as_truncated(ray_session, tiny_model):
    algo = _llm_config(tiny_model, max_prompt_tokens=10).build_algo()
    try:
        result = algo.train()
        assert result["rollouts"]["truncated_rate"] == 1.0
        assert result["rollouts"]["reward_mean"] == 0.0
    finally:
        algo.stop()


def test_a_failing_env_step_ends_only_that_episode():
    env = make_turn_env("tool_tasks", {"max_turns": 3})
    obs, infos = env.reset(options={"task_id": 1})

    def broken(action):
        raise RuntimeError("backend died")

    env.env.step = broken
    obs, rewards, terminated, truncated, infos = env.step({"turn_0": "[finish()]"})
    assert truncated["__all__"] and not terminated["__all__"]
    assert "backend died" in infos["turn_0"]["env_error"]


def test_shared_prompt_head_is_exact_for_logp_and_gradients(tiny_model):
    """Encoding the common head of a batch's prompts once changes no number."""
    e = tool_env()
    observations = []
    for task in range(6):
        e.reset(options={"task_id": task})
        if task % 2:
            e.step('[get_stock(item="apple")]')  # prompts of different lengths and turns
        observations.append(e.observe(e.agent_selection))
    module = _module(tiny_model, lora={"rank": 4, "init": False})
    torch.manual_seed(0)
    out = module._forward_exploration({"obs": np.array(observations, dtype=object)})
    rows = [{PROMPT_IDS: out[PROMPT_IDS][i], RESPONSE_IDS: out[RESPONSE_IDS][i], BEHAVIOUR_LOGP: out[BEHAVIOUR_LOGP][i]} for i in range(6)]
    batch = {k: torch.as_tensor(v) for k, v in LLMRLModule.collate_turn_rows(rows).items()}
    logps, grads = {}, {}
    for share in (True, False):
        module.settings["share_prompt_prefix"] = share
        module.model.zero_grad()
        logps[share] = module.response_logp(batch)
        torch.where(batch[RESPONSE_MASK], logps[share], 0).sum().backward()
        grads[share] = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])
    mask = batch[RESPONSE_MASK]
    assert torch.where(mask, (logps[True] - logps[False]).abs(), 0).max() < 1e-5
    assert torch.where(mask, (logps[True] - batch[BEHAVIOUR_LOGP]).abs(), 0).max() < 1e-4
    assert ((grads[True] - grads[False]).norm() / grads[False].norm()) < 1e-4


@pytest.mark.parametrize("packing", ["one_pack", "several_packs"])
def test_packed_training_forward_equals_each_row_run_alone(tiny_model, packing):
    """The training forward packs a batch's rows into sequences without padding: every
    response log-prob, every prompt's last hidden state and the gradient equal those of each
    row run through the model alone; a row with no response keeps only its prompt."""
    e = tool_env()
    observations = []
    for task in range(5):
        e.reset(options={"task_id": task})
        if task % 2:
            e.step('[get_stock(item="apple")]')
        observations.append(e.observe(e.agent_selection))
    module = _module(tiny_model, lora={"rank": 4, "init": False})
    torch.manual_seed(0)
    out = module._forward_exploration({"obs": np.array(observations, dtype=object)})
    rows = [{PROMPT_IDS: out[PROMPT_IDS][i], RESPONSE_IDS: out[RESPONSE_IDS][i], BEHAVIOUR_LOGP: out[BEHAVIOUR_LOGP][i]} for i in range(5)]
    rows[2] = {**rows[2], RESPONSE_IDS: np.zeros(0, np.int64), BEHAVIOUR_LOGP: np.zeros(0, np.float32)}
    batch = {k: torch.as_tensor(v) for k, v in LLMRLModule.collate_turn_rows(rows).items()}
    shared, rest = module._split_shared_head([list(r[PROMPT_IDS]) for r in rows])
    assert shared > 0
    # Each row is packed as its prompt's remainder and its response but the last token.
    lengths = [len(p) + max(len(r[RESPONSE_IDS]), 1) - 1 for p, r in zip(rest, rows)]
    module.settings["pack_tokens"] = 10**6 if packing == "one_pack" else lengths[0] + lengths[1]
    packs = consecutive_slices(lengths, module.settings["pack_tokens"])
    assert len(packs) == 1 if packing == "one_pack" else (len(packs) > 1 and packs[0] == slice(0, 2))
    params = [p for p in module.model.parameters() if p.requires_grad]

    module.model.zero_grad()
    logp, _, hidden = module.token_logp(module.model, batch, with_entropy=False)
    torch.where(batch[RESPONSE_MASK], logp, 0).sum().backward()
    packed_grad = torch.cat([p.grad.flatten() for p in params])

    module.model.zero_grad()
    temperature = module.settings["temperature"]
    for i, r in enumerate(rows):
        prompt, response = list(r[PROMPT_IDS]), list(r[RESPONSE_IDS])
        with _output_projection_input(module.model) as captured:
            logits = module.model(input_ids=torch.tensor([prompt + response])).logits[0]
        torch.testing.assert_close(hidden[i], captured[-1][0, len(prompt) - 1], atol=1e-5, rtol=1e-4)
        if response:
            alone = torch.log_softmax(logits[len(prompt) - 1 : -1].float() / temperature, -1)
            alone = alone.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
            torch.testing.assert_close(logp[i, : len(response)], alone, atol=1e-5, rtol=0)
            alone.sum().backward()
    alone_grad = torch.cat([p.grad.flatten() for p in params])
    assert (packed_grad - alone_grad).norm() / alone_grad.norm() < 1e-4


def test_batched_decoding_matches_transformers_generate_row_by_row(tiny_model):
    """Packing the prompts (over several packs) and dropping finished rows from the batch
    change no token: the greedy responses of a batch of prompts of different lengths equal
    transformers' ``generate`` on each prompt alone, with the same log-probs; a single
    sampled row draws the same tokens as ``generate`` from the same seed."""
    module = _module(tiny_model, stop_strings=[])
    prompts = [module.encode_prompt(o) for o in _observations(6)]
    prompts[1] = prompts[1][:-3]  # a shorter prompt: left padding inside the batch
    shared, rest = module._split_shared_head(prompts)
    assert shared > 0 and len({len(r) for r in rest}) > 1, "want a shared head and remainders of different lengths"
    # A random model's greedy text rarely holds "]": stop at the first two tokens of the
    # row that starts least like the others, so that row leaves the batch early.
    module.settings["pack_tokens"] = len(rest[0]) + len(rest[1])
    packs = consecutive_slices([len(r) for r in rest], module.settings["pack_tokens"])
    assert packs[0] == slice(0, 2) and len(packs) > 1, "want several packs, the first of two rows"
    greedy = [r["response_ids"].tolist() for r in module.generate(prompts, sample=False)]
    rarest = min(range(len(greedy)), key=lambda i: [g[0] for g in greedy].count(greedy[i][0]))
    module.settings["stop_strings"] = [module.tokenizer.decode(greedy[rarest][:2])]
    batched = module.generate(prompts, sample=False)
    assert len({len(r["response_ids"]) for r in batched}) > 1, "want rows that end at different steps"
    max_new = GENERATION["max_new_tokens"]
    for prompt, row in zip(prompts, batched):
        # Run to max_new_tokens, then cut at the response's first stop string.
        out = module.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False)
        alone = out[0, len(prompt) :].tolist()
        assert row["response_ids"].tolist() == alone[: module._response_length(alone)]
        logits = module.model(input_ids=torch.tensor([prompt + alone])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(alone)[:, None]).squeeze(-1)
        np.testing.assert_allclose(row["response_logp"], expected[: len(row["response_ids"])].detach().numpy(), atol=1e-4)
    module.settings["stop_strings"] = []
    torch.manual_seed(1)
    sampled = module.generate(prompts[:1], sample=True)[0]["response_ids"].tolist()
    torch.manual_seed(1)
    out = module.model.generate(input_ids=torch.tensor(prompts[:1]), max_new_tokens=max_new, do_sample=True, temperature=1.0, top_k=0)
    assert sampled == out[0, len(prompts[0]) :].tolist()


@pytest.mark.parametrize("lora", [None, {"rank": 4, "init": False}], ids=["full", "lora"])
def test_bf16_trains_saves_restores_and_continues_with_fp32_masters(ray_session, tiny_model, tmp_path, lora):
    algo = _llm_config(tiny_model, lora=lora, dtype="bfloat16").build_algo()
    try:
        before, trainable = _learner_params(algo)
        algo.train()
        after, _ = _learner_params(algo)
        learner_module = algo.learner_group._learner.module[SHARED_MODULE_ID]
        # Every trainable weight is an fp32 master; the frozen base (LoRA) computes in bf16.
        for name, p in learner_module.named_parameters():
            assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
        assert any(not torch.equal(before[n], after[n]) for n in trainable if not n.startswith("value_head."))
        # The env runner computes in bf16 and holds the synced weights (rounded to bf16).
        runner = algo.get_module(SHARED_MODULE_ID)
        runner_params = dict(runner.named_parameters())
        for name, p in runner_params.items():
            assert p.dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name
        for name in trainable:
            if name in runner_params:
                assert torch.equal(runner_params[name].float(), after[name].to(runner_params[name].dtype).float()), name
        algo.save_to_path(str(tmp_path))
    finally:
        algo.stop()
    restored = SeeUPO.from_checkpoint(str(tmp_path))
    try:
        again, _ = _learner_params(restored)
        for name in trainable:
            assert torch.equal(again[name], after[name]), name  # the fp32 masters, bit for bit
        assert restored.train()["training_iteration"] == 2
        later, _ = _learner_params(restored)
        assert any(not torch.equal(later[n], after[n]) for n in trainable if not n.startswith("value_head."))
    finally:
        restored.stop()
