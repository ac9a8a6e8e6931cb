"""Rollout throughput: batched generation across live episodes vs one episode at a time,
for each rollout engine (transformers, vLLM).

Plays the same held-out tasks of the embedded env with the same greedy policy, side by side
in one process: for each engine, once with every live episode's turn generated in one
batch, once with a batch of one. Reports episodes/s, generated tokens/s (medians over
``--repeats``) and the speed-ups.

    python benchmarks/rollout_throughput.py --model smollm2-135m-instruct --episodes 16 --threads 2
    .venv-vllm/bin/python benchmarks/rollout_throughput.py --engines transformers vllm --threads 2

``--bound`` also measures, for the transformers engine, the cost of one decode step at
batch 1, 2, 4, 8, 16 (and the largest batch of the run) and the prefill cost per token, and from them and the batched run's
own calls (prompt lengths, response lengths) the least time batched generation could take
with no padding and no overhead: the ceiling of the batched/one-at-a-time ratio on this
machine for the same tokens.

vLLM starts its engine in spawned processes (hence the ``__main__`` guard below); unless
``VLLM_CPU_OMP_THREADS_BIND`` is set, its worker is bound to the first ``--threads`` cores,
so both engines compute on the same number of threads. Its prefix cache is emptied before
each timed run (it still reuses prompt heads within a run, across turns and episodes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--engines", nargs="+", default=["transformers"], choices=["transformers", "vllm"])
    parser.add_argument("--modes", nargs="+", default=["batched", "one_at_a_time"], choices=["batched", "one_at_a_time"])
    parser.add_argument("--bound", action="store_true", help="also measure step costs and the batched time bound")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    import os

    if "vllm" in args.engines:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}" if args.threads > 1 else "0")
    import torch

    torch.set_num_threads(args.threads)
    from envs.text import AnyText
    from rllib_seeupo.evaluation import evaluate
    from rllib_seeupo.llm.module import LLMRLModule

    tasks = list(range(10**6, 10**6 + args.episodes))
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for engine in args.engines:
        module = LLMRLModule(
            observation_space=AnyText(10**6),
            action_space=AnyText(4000),
            model_config={
                "model": args.model, "max_new_tokens": args.max_new_tokens, "response_prefix": "[",
                "stop_strings": ["]"], "engine": engine,
            },
        )
        tokens = [0]
        calls = []  # per policy call: (prompt tokens to encode, response lengths)

        def policy(observations, sample):
            prompts = [module.encode_prompt(o) for o in observations]
            out = module.generate(prompts, sample=sample)
            tokens[0] += sum(len(o["response_ids"]) for o in out)
            shared, rest = module._split_shared_head(prompts)
            calls.append((shared + sum(len(r) for r in rest), [len(o["response_ids"]) for o in out]))
            return [o["text"] for o in out]

        start = time.perf_counter()
        module.generate([[module.tokenizer.eos_token_id]], sample=False)  # vLLM: start, load weights
        print(f"{engine}: first call {time.perf_counter() - start:.1f} s", flush=True)
        figures[engine] = {}
        for mode in args.modes:
            times, token_counts = [], []
            for _ in range(args.repeats):
                if engine == "vllm":
                    module.vllm_engine().llm.reset_prefix_cache()
                tokens[0] = 0
                calls.clear()
                start = time.perf_counter()
                batch_size = args.episodes if mode == "batched" else 1
                result = evaluate(policy, "tool_tasks", {"max_turns": 3}, tasks, batch_size=batch_size)
                times.append(time.perf_counter() - start)
                token_counts.append(tokens[0])
            seconds = statistics.median(times)
            figures[engine][mode] = {
                "seconds": seconds,
                "episodes_per_s": args.episodes / seconds,
                "tokens_per_s": statistics.median(token_counts) / seconds,
                "tokens": statistics.median(token_counts),
                "success_rate": result["success_rate"],
            }
            print(f"{engine:12s} {mode:14s} {seconds:7.1f} s  {figures[engine][mode]['episodes_per_s']:.3f} episodes/s  "
                  f"{figures[engine][mode]['tokens_per_s']:.1f} tokens/s  success {result['success_rate']:.2f}", flush=True)
            if args.bound and engine == "transformers" and mode == "batched":
                figures[engine]["bound"] = batched_time_bound(module, list(calls))
        if module._vllm is not None:
            # What every training iteration adds: the synced weights reloaded into the engine.
            module.weights_version += 1
            start = time.perf_counter()
            module.vllm_engine().sync_weights()
            figures[engine]["weight_sync_s"] = time.perf_counter() - start
            print(f"{engine}: weight sync {figures[engine]['weight_sync_s']:.2f} s", flush=True)
            module._vllm.close()
    speedups = {}
    runs = figures.get("transformers", {})
    if "bound" in runs and "one_at_a_time" in runs:
        speedups["transformers_batched_over_one_at_a_time_ceiling"] = (
            runs["one_at_a_time"]["seconds"] / runs["bound"]["batched_seconds_bound"]
        )
    for engine, runs in figures.items():
        if "batched" in runs and "one_at_a_time" in runs:
            speedups[f"{engine}_batched_over_one_at_a_time"] = runs["one_at_a_time"]["seconds"] / runs["batched"]["seconds"]
    if "transformers" in figures and "vllm" in figures:
        for mode in set(figures["transformers"]) & set(figures["vllm"]):
            speedups[f"vllm_over_transformers_{mode}"] = figures["transformers"][mode]["seconds"] / figures["vllm"][mode]["seconds"]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **figures, "speedup": speedups}, f, indent=2)
    for name, value in speedups.items():
        print(f"speedup {name} {value:.2f}")


def batched_time_bound(module, calls: list[tuple[int, list[int]]]) -> dict:
    """Least seconds the batched run's ``calls`` could take on this machine: every prompt
    token encoded once at the measured prefill cost per token (no padding; the shared head
    once per call) plus, per call, one decode step per generated position at the measured
    cost of a step at that position's number of live rows (interpolated between the
    measured batch sizes). Python, sampling and env time count as zero."""
    import numpy as np
    import torch

    from rllib_seeupo.llm.kv_cache import reserved_cache

    model, cached = module.model, 250  # positions in the cache, about a second turn's prompt

    step_ms = {}
    with torch.no_grad():
        for batch in sorted({1, 2, 4, 8, 16, max(len(lengths) for _, lengths in calls)}):
            cache = reserved_cache(model.config, batch, cached + 1)
            model(input_ids=torch.randint(0, 1000, (batch, cached)), past_key_values=cache, logits_to_keep=1)
            token = torch.randint(0, 1000, (batch, 1))

            def step():
                model(input_ids=token, past_key_values=cache, logits_to_keep=1)
                cache.crop(-1)

            step_ms[batch] = 1e3 * median_seconds(step, 9)
        prompt = torch.randint(0, 1000, (1, 512))
        prefill_ms_per_token = 1e3 * median_seconds(lambda: model(input_ids=prompt, logits_to_keep=1), 3) / 512
    sizes = sorted(step_ms)
    decode_ms = prefill_ms = 0.0
    for prompt_tokens, lengths in calls:
        prefill_ms += prompt_tokens * prefill_ms_per_token
        for position in range(1, max(lengths)):  # the first token comes out of the prefill
            live = sum(1 for n in lengths if n > position)
            decode_ms += float(np.interp(live, sizes, [step_ms[b] for b in sizes]))
    bound = {
        "step_ms_by_batch": step_ms,
        "prefill_ms_per_token": prefill_ms_per_token,
        "prefill_seconds_bound": prefill_ms / 1e3,
        "decode_seconds_bound": decode_ms / 1e3,
        "batched_seconds_bound": (prefill_ms + decode_ms) / 1e3,
    }
    print("decode step ms by batch size: " + ", ".join(f"{b}: {t:.1f}" for b, t in step_ms.items())
          + f"; prefill {prefill_ms_per_token:.2f} ms/token", flush=True)
    print(f"batched bound {bound['batched_seconds_bound']:.1f} s (prefill {bound['prefill_seconds_bound']:.1f} s, "
          f"decode {bound['decode_seconds_bound']:.1f} s)", flush=True)
    return bound


if __name__ == "__main__":
    main()
