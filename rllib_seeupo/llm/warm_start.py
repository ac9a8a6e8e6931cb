"""A warm start: supervised fine-tuning on demonstration chats before RL, written out as a
model folder that ``model_config.model`` then names (torch, transformers and peft only).

RL learns only from the calls its rollouts make. When a small model never makes the call a
task needs first (SmolLM2-135M never calls ``read_note()`` on the embedded env's pointer
levels: docs/RESULTS.md section 4), no group holds a rollout with an advantage to learn it
from, whatever the algorithm. verl, OpenRLHF and TRL start RL from an SFT checkpoint for
the same reason; this is that step at its smallest. The loss is the mean negative
log-likelihood of every assistant token (the response prefix excluded: it is part of the
prompt in rollouts too), under the same prompt encoding the rollouts use (the tokenizer's
chat template, then ``response_prefix``). With LoRA the adapter is merged into the weights
that are written, so RL starts a fresh adapter over the warm-started model.

Demonstrations come from the env: a turn env may offer ``demonstrations(task_ids)``, the
chats of a scripted solver (design.md 4.1); ``envs.tool_tasks`` has one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllib_seeupo.columns import RESPONSE_MASK
from rllib_seeupo.llm.core import StandalonePolicy, collate_prompts_and_responses
from rllib_seeupo.llm.models import resolve_model

RECORD = "warm_start.json"


def supervised_pairs(tokenizer, chats: list[list[dict[str, str]]], response_prefix: str = "",
                     stop_strings: list[str] | tuple[str, ...] = ()) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, response ids)`` for every assistant message of every chat.

    The prompt is the chat before the message, encoded as ``LLMRLModule.encode_prompt``
    encodes an observation (chat template with the generation prompt, then the response
    prefix); the response is the message without that prefix, ending as a rollout's does:
    with the eos token, unless it ends with one of ``stop_strings`` (generation stops there).
    A message that does not start with the prefix cannot be a rollout's response: a
    ValueError names it."""
    pairs = []
    prefix_ids = tokenizer(response_prefix, add_special_tokens=False)["input_ids"] if response_prefix else []
    for c, chat in enumerate(chats):
        for k, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            text = message["content"]
            if not text.startswith(response_prefix):
                raise ValueError(f"demonstration {c}, message {k}: {text[:40]!r} does not start with the response prefix {response_prefix!r}")
            prompt = tokenizer.apply_chat_template(chat[:k], add_generation_prompt=True, tokenize=True)
            if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
                prompt = prompt["input_ids"]
            response = tokenizer(text[len(response_prefix):], add_special_tokens=False)["input_ids"]
            if not any(text.endswith(stop) for stop in stop_strings) and tokenizer.eos_token_id is not None:
                response = list(response) + [tokenizer.eos_token_id]
            if response:
                pairs.append((list(prompt) + list(prefix_ids), list(response)))
    return pairs


def warm_start(
    model: str,
    chats: list[list[dict[str, str]]],
    output_dir: str | Path,
    *,
    response_prefix: str = "",
    stop_strings: list[str] | tuple[str, ...] = (),
    lora: dict[str, Any] | None = None,
    steps: int = 20,
    batch_size: int = 8,
    lr: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune ``model`` (a name ``model_config.model`` takes) on ``chats`` for ``steps``
    AdamW steps of ``batch_size`` assistant messages (drawn without replacement, epoch by
    epoch, from a generator seeded with ``seed``) and write the result to ``output_dir``: a
    model folder with its tokenizer and ``warm_start.json`` (the settings and every step's
    loss). ``lora``: ``{rank, alpha, dropout, target_modules}`` trains an adapter and merges
    it; None trains every weight (in fp32 on the CPU: about 16 bytes a parameter with
    AdamW, fine for the small models a CPU trains, not for an 8B one). ``response_prefix``
    and ``stop_strings`` are the module's (``model_config``): responses are encoded as
    rollouts record them. Returns the record.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"warm_start: steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"warm_start: {output_dir} exists and is not empty")
    start = time.perf_counter()
    torch.manual_seed(seed)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(
            r=int(lora.get("rank", 8)), lora_alpha=float(lora.get("alpha", 16)), lora_dropout=float(lora.get("dropout", 0.0)),
            target_modules=lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ))
    pairs = supervised_pairs(tokenizer, chats, response_prefix, stop_strings)
    if not pairs:
        raise ValueError("warm_start: the demonstrations hold no assistant message")
    policy = StandalonePolicy(net, tokenizer)  # temperature 1: the plain log-likelihood
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses = []
    net.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.permutation(len(pairs)).tolist()
        rows, order = order[:batch_size], order[batch_size:]
        batch = {k: torch.as_tensor(v) for k, v in collate_prompts_and_responses(*zip(*[pairs[i] for i in rows])).items()}
        logp = policy.token_logp(net, batch, with_entropy=False)[0]
        mask = batch[RESPONSE_MASK].float()
        loss = -(logp * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    net.eval()
    if lora:
        net = net.merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    record = {
        "model": model, "chats": len(chats), "messages": len(pairs), "steps": steps, "batch_size": batch_size, "lr": lr,
        "lora": lora, "seed": seed, "response_prefix": response_prefix, "stop_strings": list(stop_strings), "loss": losses,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output_dir / RECORD).write_text(json.dumps(record, indent=1))
    return record
