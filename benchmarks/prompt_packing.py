"""Prefill of a batch of prompts: packed sequences of several sizes vs one left-padded batch.

Every prompt is a shared head (the system prompt) followed by a remainder of random length;
``LLMRLModule._encode_prompts`` encodes the head once and packs the remainders into
sequences of at most ``pack_tokens`` tokens. The baseline runs the head once and then all
remainders as one left-padded batch. Prints the median seconds per batch shape and setting.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompt_packing.py --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import random

from _timing import median_seconds

SHAPES = [(16, 12, 30), (16, 38, 75), (32, 38, 75), (32, 76, 131)]  # rows, shortest, longest remainder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--head", type=int, default=175, help="tokens every prompt shares")
    parser.add_argument("--pack-tokens", type=int, nargs="+", default=[128, 256, 512, 1024, 10**6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from envs.text import AnyText
    from rllib_seeupo.llm.kv_cache import reserved_cache
    from rllib_seeupo.llm.core import _left_pad
    from rllib_seeupo.llm.module import LLMRLModule

    module = LLMRLModule(observation_space=AnyText(10**6), action_space=AnyText(4000), model_config={"model": args.model})
    model, device = module.model, torch.device("cpu")
    rng = random.Random(0)
    head = [rng.randrange(1000, 2000) for _ in range(args.head)]

    def padded(rest):
        ids, mask = _left_pad(rest, 0)
        cache = reserved_cache(model.config, len(rest), len(head) + ids.shape[1])
        model(input_ids=torch.tensor([head]), past_key_values=cache, logits_to_keep=1)
        attention = torch.cat([torch.ones((len(rest), len(head)), dtype=torch.long), mask.long()], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, len(head) :]
        model(input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache, logits_to_keep=1)

    results = []
    with torch.no_grad():
        for rows, shortest, longest in SHAPES:
            rest = [[rng.randrange(1000, 2000) for _ in range(rng.randint(shortest, longest))] for _ in range(rows)]
            row = {"rows": rows, "remainder_tokens": [shortest, longest], "tokens": sum(map(len, rest))}
            for pack_tokens in args.pack_tokens:
                module.settings["pack_tokens"] = pack_tokens
                row[f"packed_{pack_tokens}"] = median_seconds(
                    lambda: module._encode_prompts(head, rest, len(head) + longest, device), args.repeats
                )
            row["padded"] = median_seconds(lambda: padded(rest), args.repeats)
            results.append(row)
            print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
