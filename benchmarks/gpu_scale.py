"""The LLM compute at the paper's scale on one GPU, without Ray: a randomly initialised model
of Qwen3-8B's shape (no download) in bf16, measured through the project's own Ray-free core
(``rllib_seeupo.llm.core``) and loss (``rllib_seeupo.objectives``):

- decode: tokens/s of the batched decode loop at batch 64 (random 512-token prompts, 256 new
  tokens each, sampled at temperature 1);
- a turn update with a LoRA adapter (rank 64 on q/k/v/o, fp32 adapter over the bf16 base): one
  forward/backward of one row of 4k / 16k / 28k tokens (its last 256 the response) through
  the packed training forward and SeeUPO's loss, then an Adam step, with gradient
  checkpointing off and on: peak GPU memory and tokens/s (the median of the repeats after a
  warm-up). A configuration that runs out of memory is recorded as such.

    python benchmarks/gpu_scale.py --out results/gpu_scale.json          # one GPU, ~5 min
    python benchmarks/gpu_scale.py --tiny --out results/gpu_scale_cpu.json  # CPU, seconds

``--tiny`` runs the same code on a 2-layer model of Qwen3's layout at small sizes on CPU (the
test suite runs it so the script cannot rot); its figures mean nothing for a GPU.
Only torch, transformers and peft are imported (the GPU machine has no Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen3-8B's published config.json (the same values as rllib_seeupo.placement.KNOWN_SHAPES).
QWEN3_8B = dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1_000_000.0,
    tie_word_embeddings=False, rms_norm_eps=1e-6,
)
TINY = dict(QWEN3_8B, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)
FULL_RUN = {"decode_batch": 64, "prompt": 512, "new_tokens": 256, "contexts": [4096, 16384, 28672], "response": 256,
            "repeats": 2}
TINY_RUN = {"decode_batch": 4, "prompt": 32, "new_tokens": 8, "contexts": [64, 128, 256], "response": 16, "repeats": 1}


def build_tokenizer():
    """A word-level tokenizer with ChatML's special tokens, built in code: the decode loop only
    needs its eos and pad ids (the model samples ids over its whole vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<|endoftext|>")


def build_model(shape: dict, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    """A randomly initialised Qwen3 of ``shape`` with a LoRA adapter (fp32) over the frozen base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    with torch.device(device):  # built in place, in its dtype (8B parameters never pass through fp32)
        model = AutoModelForCausalLM.from_config(Qwen3Config(**shape), dtype=dtype)
    model.config.use_cache = True
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    return model.train()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure_decode(policy, device, run: dict, vocab: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab, (run["decode_batch"], run["prompt"]), generator=generator).tolist()
    policy.model.eval()
    policy.decode(prompts[:2], sample=True)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    responses, _ = policy.decode(prompts, sample=True)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(r) for r in responses)
    policy.model.train()
    return {"batch": len(prompts), "prompt_tokens": run["prompt"], "new_tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds}


def turn_update(policy, optimizer, batch: dict) -> None:
    """One forward/backward of SeeUPO's loss on ``batch`` and one optimizer step."""
    from rllib_seeupo import objectives
    from rllib_seeupo.columns import RESPONSE_MASK

    logp, _, _ = policy.token_logp(policy.model, batch, with_entropy=False)
    rows = logp.shape[0]
    loss, _ = objectives.policy_loss(
        logp=logp, old_logp=logp.detach(), mask=batch[RESPONSE_MASK],
        advantages=torch.ones(rows, device=logp.device), compound_factor=torch.ones(rows, device=logp.device),
    )
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_update(shape, device, dtype, run: dict, context: int, checkpointing: bool) -> dict:
    from rllib_seeupo.columns import PROMPT_IDS, PROMPT_MASK, RESPONSE_IDS, RESPONSE_MASK
    from rllib_seeupo.llm.core import StandalonePolicy

    model = build_model(shape, device, dtype, checkpointing)
    policy = StandalonePolicy(model, build_tokenizer(), pack_tokens=context, logprob_chunk_tokens=512)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(1)
    prompt = context - run["response"]
    batch = {
        PROMPT_IDS: torch.randint(10, shape["vocab_size"], (1, prompt), generator=generator).to(device),
        PROMPT_MASK: torch.ones((1, prompt), dtype=torch.bool, device=device),
        RESPONSE_IDS: torch.randint(10, shape["vocab_size"], (1, run["response"]), generator=generator).to(device),
        RESPONSE_MASK: torch.ones((1, run["response"]), dtype=torch.bool, device=device),
    }
    result = {"context_tokens": context, "checkpointing": checkpointing}
    try:
        turn_update(policy, optimizer, batch)  # warm-up (Adam's state is allocated here)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in range(run["repeats"]):
            synchronize(device)
            start = time.perf_counter()
            turn_update(policy, optimizer, batch)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        result |= {"seconds": median, "tokens_per_s": context / median, "peak_memory_gib": peak_gib(device)}
    except torch.OutOfMemoryError:
        result |= {"out_of_memory": True}
    del model, policy, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a small model and sizes, on CPU")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    shape, run = (TINY, TINY_RUN) if args.tiny else (QWEN3_8B, FULL_RUN)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        parser.error("needs a GPU (use --tiny on CPU)")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    started = time.perf_counter()
    from rllib_seeupo.llm.core import StandalonePolicy

    policy = StandalonePolicy(build_model(shape, device, dtype, False), build_tokenizer(), max_new_tokens=run["new_tokens"],
                              max_prompt_tokens=run["prompt"])
    parameters = sum(p.numel() for p in policy.model.parameters())
    report = {
        "model": "Qwen3-8B shape, random init" if not args.tiny else "tiny Qwen3 layout", "shape": shape,
        "parameters": parameters, "dtype": str(dtype).removeprefix("torch."), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "decode": measure_decode(policy, device, run, shape["vocab_size"]),
    }
    print(f"decode: batch {report['decode']['batch']}, {report['decode']['tokens_per_s']:.0f} tokens/s", flush=True)
    del policy
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report["turn_update"] = []
    for context in run["contexts"]:
        for checkpointing in (False, True):
            result = measure_update(shape, device, dtype, run, context, checkpointing)
            report["turn_update"].append(result)
            peak = result.get("peak_memory_gib")
            figures = ("out of memory" if result.get("out_of_memory") else
                       f"{result['tokens_per_s']:.0f} tokens/s" + (f", peak {peak:.1f} GiB" if peak is not None else ""))
            print(f"turn update: {context} tokens, checkpointing {'on' if checkpointing else 'off'}: {figures}", flush=True)
    report["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
