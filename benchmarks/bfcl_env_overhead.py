"""BFCL env overhead: time per env step (no model), memory over many episodes, and the
prompt length in tokens of each function-doc format.

The policy replays the ground truth (``envs.bfcl.ground_truth_response``), so every figure
is the env's own cost: decoding, bfcl's executor, observations, and at the end of an
episode bfcl's checker. Token counts use SmolLM2-135M-Instruct's tokenizer and chat
template (tokenizer only), for the first prompt of every entry and for the longest prompt
of its ground-truth episode (the context grows with every call result).

    python benchmarks/bfcl_env_overhead.py --episodes 1000 --out results/bfcl_env_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def play(e, task_id, step_times=None, final_times=None, prompts=None, call_times=None):
    """One ground-truth episode; records per-step seconds (all steps but the last, the
    steps that run calls, the last step with the checker) and the observations."""
    from envs.bfcl import ground_truth_response

    e.reset(options={"task_id": task_id})
    for agent in e.agent_iter():
        obs, _, terminated, truncated, info = e.last()
        if terminated or truncated:
            e.step(None)
            continue
        if prompts is not None:
            prompts.append(str(obs))
        action = ground_truth_response(e)
        start = time.perf_counter()
        e.step(action)
        seconds = time.perf_counter() - start
        if step_times is not None:
            if e.terminations.get(agent) or e.truncations.get(agent):
                final_times.append(seconds)
            else:
                step_times.append(seconds)
                if action.startswith("["):
                    call_times.append(seconds)
    return info


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": statistics.median(values), "p90": values[int(0.9 * (len(values) - 1))], "max": values[-1], "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000, help="episodes for the memory figure")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer counts tokens")
    parser.add_argument("--window", type=int, default=8192, help="context window to compare with")
    parser.add_argument("--skip-tokens", action="store_true")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from envs.bfcl import CATEGORIES, env
    from envs.bfcl import backend

    figures: dict = {"args": vars(args)}
    e = env(categories=CATEGORIES)
    ids = e.task_ids("train") + e.task_ids("test")
    for category in CATEGORIES:
        backend.load_category(category)

    # 1. Time per step over every entry (one pass), the scoring step apart.
    step_times, final_times, call_times = [], [], []
    start = time.perf_counter()
    successes = sum(play(e, t, step_times, final_times, call_times=call_times)["success"] for t in ids)
    wall = time.perf_counter() - start
    figures["steps"] = {
        "episodes": len(ids),
        "success": successes,
        "wall_s": wall,
        "step_ms": {k: v * 1e3 if k != "n" else v for k, v in summary(step_times).items()},
        "call_step_ms": {k: v * 1e3 if k != "n" else v for k, v in summary(call_times).items()},
        "final_step_with_checker_ms": {k: v * 1e3 if k != "n" else v for k, v in summary(final_times).items()},
    }
    s = figures["steps"]
    print(f"ground truth: {successes:.0f}/{len(ids)} valid in {wall:.1f} s; step median {s['step_ms']['median']:.2f} ms "
          f"(p90 {s['step_ms']['p90']:.2f}; steps that run calls {s['call_step_ms']['median']:.2f}), last step with the checker median {s['final_step_with_checker_ms']['median']:.2f} ms", flush=True)

    # 2. Memory: RSS after 10 episodes vs after args.episodes (ids cycled), fresh env.
    e = env(categories=CATEGORIES)
    rss = {"start": rss_mb()}
    for i in range(args.episodes):
        play(e, ids[i % len(ids)])
        if i + 1 in (10, 100, args.episodes):
            rss[f"after_{i + 1}"] = rss_mb()
    rss["backend_instances_left"] = sum(k.endswith("_instance") for k in vars(backend.bfcl().executor))
    figures["rss_mb"] = rss
    print("RSS MB: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in rss.items()), flush=True)

    # 3. Prompt tokens per doc format.
    if not args.skip_tokens:
        from transformers import AutoTokenizer

        from envs.text import decode_messages
        from rllib_seeupo.llm.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))

        def count(observations: list[str]) -> list[int]:
            texts = [tokenizer.apply_chat_template(decode_messages(o), add_generation_prompt=True, tokenize=False) for o in observations]
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

        figures["tokens"] = {}
        for doc_format in ("json", "compact"):
            e = env(categories=CATEGORIES, doc_format=doc_format)
            first, longest, chars = [], [], []
            for task_id in ids:
                prompts: list[str] = []
                play(e, task_id, prompts=prompts)
                n = count([prompts[0], prompts[-1]])
                first.append(n[0])
                longest.append(max(n))
                chars.append(len(json.loads(prompts[0])[0]["content"]))
            row = {
                "system_prompt_chars_median": statistics.median(chars),
                "first_prompt": {"median": statistics.median(first), "max": max(first), "over_window": sum(x > args.window for x in first)},
                "longest_prompt": {"median": statistics.median(longest), "max": max(longest), "over_window": sum(x > args.window for x in longest)},
            }
            figures["tokens"][doc_format] = row
            print(f"{doc_format:8s} system prompt {row['system_prompt_chars_median']:.0f} chars (median); first prompt "
                  f"{row['first_prompt']['median']:.0f} tokens median, {row['first_prompt']['max']} max, "
                  f"{row['first_prompt']['over_window']}/{len(ids)} over {args.window}; longest prompt of the episode "
                  f"{row['longest_prompt']['median']:.0f} median, {row['longest_prompt']['max']} max, "
                  f"{row['longest_prompt']['over_window']}/{len(ids)} over {args.window}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
