"""Rollout throughput: batched generation across live episodes vs one episode at a time.

Plays the same held-out tasks of the embedded env with the same greedy policy twice, side
by side in one process: once with every live episode's turn generated in one batch, once
with a batch of one. Reports episodes/s, generated tokens/s and the speed-up.

    python benchmarks/rollout_throughput.py --model smollm2-135m-instruct --episodes 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from envs.text import AnyText
    from rllib_seeupo.evaluation import evaluate
    from rllib_seeupo.llm.module import LLMRLModule

    module = LLMRLModule(
        observation_space=AnyText(10**6),
        action_space=AnyText(4000),
        model_config={
            "model": args.model, "max_new_tokens": args.max_new_tokens, "response_prefix": "[", "stop_strings": ["]"],
        },
    )
    tokens = [0]

    def policy(observations, sample):
        prompts = [module.encode_prompt(o) for o in observations]
        out = module.generate(prompts, sample=sample)
        tokens[0] += sum(len(o["response_ids"]) for o in out)
        return [o["text"] for o in out]

    tasks = list(range(10**6, 10**6 + args.episodes))
    figures: dict[str, dict[str, float]] = {}
    for label, batch_size in (("batched", args.episodes), ("one_at_a_time", 1)):
        times, token_counts = [], []
        for _ in range(args.repeats):
            tokens[0] = 0
            start = time.perf_counter()
            result = evaluate(policy, "tool_tasks", {"max_turns": 3}, tasks, batch_size=batch_size)
            times.append(time.perf_counter() - start)
            token_counts.append(tokens[0])
        seconds = statistics.median(times)
        figures[label] = {
            "seconds": seconds,
            "episodes_per_s": args.episodes / seconds,
            "tokens_per_s": statistics.median(token_counts) / seconds,
            "success_rate": result["success_rate"],
        }
        print(f"{label:14s} {seconds:7.1f} s  {figures[label]['episodes_per_s']:.3f} episodes/s  "
              f"{figures[label]['tokens_per_s']:.1f} tokens/s", flush=True)
    speedup = figures["one_at_a_time"]["seconds"] / figures["batched"]["seconds"]
    figures["speedup"] = {"batched_over_one_at_a_time": speedup}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **figures}, f, indent=2)
    print(f"speedup {speedup:.2f}")


if __name__ == "__main__":
    main()
