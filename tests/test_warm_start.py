"""The warm start: supervised pairs as rollouts encode them, and a fine-tuning pass that
raises the demonstrations' likelihood and writes a model folder the module loads."""

import json

import pytest
import torch

from envs.tool_tasks import env
from rllib_seeupo.llm.warm_start import RECORD, supervised_pairs, warm_start

LEVELS = (1, 2, 5, 6, 7)


def test_the_scripted_solver_s_demonstrations_solve_their_tasks():
    e = env(max_turns=3, levels=LEVELS)
    ids = list(e.task_ids("train")[:12])
    chats = e.demonstrations(ids)
    assert len(chats) == len(ids)
    for task_id, chat in zip(ids, chats):
        e.reset(options={"task_id": task_id})
        assert chat[:2] == e.messages  # the system prompt and the request
        for message in chat[2:]:
            if message["role"] == "assistant":
                e.step(message["content"])
        assert e.infos["turn_0"]["success"] == 1.0


def test_supervised_pairs_are_encoded_as_the_module_encodes_prompts(tiny_model):
    from transformers import AutoTokenizer

    from rllib_seeupo.llm.module import LLMRLModule

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    e = env(max_turns=3, levels=LEVELS)
    chats = e.demonstrations(list(e.task_ids("train")[:4]))
    pairs = supervised_pairs(tokenizer, chats, response_prefix="[")
    assert len(pairs) == sum(m["role"] == "assistant" for chat in chats for m in chat)
    module = LLMRLModule(
        observation_space=e.observation_space("turn_0"), action_space=e.action_space("turn_0"),
        model_config={"model": tiny_model, "response_prefix": "["}, inference_only=True,
    )
    from envs.text import encode_messages

    # Every turn, tool replies in its prompt included: the prompt the rollout would see.
    turns = [(chat, k) for chat in chats for k, m in enumerate(chat) if m["role"] == "assistant"]
    for (chat, k), (prompt, response) in zip(turns, pairs):
        assert prompt == module.encode_prompt(encode_messages(chat[:k]))
        # Without stop strings a rollout's response ends with eos, and so does its target.
        assert response[-1] == tokenizer.eos_token_id
        assert "[" + tokenizer.decode(response[:-1]) == chat[k]["content"]
    # With the main job's stop string "]", generation stops there: no eos to learn.
    stopped = supervised_pairs(tokenizer, chats, response_prefix="[", stop_strings=["]"])
    assert [r for _, r in stopped] == [r[:-1] for _, r in pairs]
    with pytest.raises(ValueError, match="response prefix"):
        supervised_pairs(tokenizer, chats, response_prefix="<call>")


def test_warm_start_raises_the_likelihood_of_the_demonstrations(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rllib_seeupo.llm.core import StandalonePolicy, collate_prompts_and_responses

    e = env(max_turns=3, levels=LEVELS)
    chats = e.demonstrations(list(e.task_ids("train")[:6]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    pairs = supervised_pairs(tokenizer, chats, response_prefix="[")
    batch = {k: torch.as_tensor(v) for k, v in collate_prompts_and_responses(*zip(*pairs)).items()}

    def mean_logp(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        with torch.no_grad():
            logp = StandalonePolicy(model, tokenizer).token_logp(model, batch, with_entropy=False)[0]
        return float((logp * batch["response_mask"]).sum() / batch["response_mask"].sum()), model.state_dict()

    before, base = mean_logp(tiny_model)
    full = warm_start(tiny_model, chats, tmp_path / "full", response_prefix="[", steps=12, batch_size=4, lr=2e-2)
    assert json.loads((tmp_path / "full" / RECORD).read_text())["loss"] == full["loss"]
    assert len(full["loss"]) == 12
    assert mean_logp(tmp_path / "full")[0] > before + 1.0  # nats per token

    # LoRA: the adapter is merged, so the folder is a plain model whose projections changed.
    warm_start(tiny_model, chats, tmp_path / "lora", response_prefix="[", lora={"rank": 4, "alpha": 8}, steps=12,
               batch_size=4, lr=2e-2)
    after, tuned = mean_logp(tmp_path / "lora")
    assert after > before
    assert tuned.keys() == base.keys()
    changed = [k for k, v in tuned.items() if not torch.equal(v, base[k])]
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")) for k in changed)
    with pytest.raises(ValueError, match="not empty"):
        warm_start(tiny_model, chats, tmp_path / "lora", steps=1)
