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

``--runners R`` compares instead one env runner with its own engine against R runners that
share one engine (``rllib_seeupo.llm.engine_actor.RolloutEngine``), on the same episodes:
each runner keeps ``--live`` episodes going and sends their turns' prompts to its engine,
which batches the requests that reach it together. The shared engine and the runners are Ray
actors, as in training with ``engine.num_engines``; the runners play the embedded env.
Reports episodes/s, tokens/s and the engine's requests per batch.

``--no-ray`` is the same comparison for a GPU machine without Ray (and without the envs'
dependencies): a randomly initialised model of Qwen3-8B's shape in bf16 (no download), the
Ray-free decode loop (``rllib_seeupo.llm.core``) behind the engines' batching
(``BatchingEngine``), and runners that are threads sending ``--live`` random prompts of
``--prompt-tokens`` tokens for ``--turns`` turns each; ``--tiny`` runs it scaled down on
CPU (the test suite does, in a process without Ray). Reports turns/s (one turn = one
runner's batch of live prompts answered) and tokens/s.

    .venv/bin/python benchmarks/rollout_throughput.py --runners 2 --episodes 32 --live 8 --threads 1
    python benchmarks/rollout_throughput.py --runners 4 --live 16 --no-ray --out gpu_shared.json  # one GPU

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
    parser.add_argument("--runners", type=int, default=0, help="compare one runner with its own engine "
                        "against this many runners sharing one engine")
    parser.add_argument("--live", type=int, default=8, help="live episodes per runner (--runners)")
    parser.add_argument("--no-ray", action="store_true", help="--runners on a GPU without Ray: random prompts, a "
                        "random Qwen3-8B-shaped model, runners as threads")
    parser.add_argument("--tiny", action="store_true", help="--no-ray scaled down, on CPU")
    parser.add_argument("--turns", type=int, default=3, help="turns per runner (--no-ray)")
    parser.add_argument("--prompt-tokens", type=int, default=1024, help="tokens per prompt (--no-ray)")
    args = parser.parse_args()
    if args.runners and args.no_ray:
        return raw_shared_engine_comparison(args)
    if args.runners:
        return shared_engine_comparison(args)

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


def shared_engine_comparison(args) -> None:
    """One runner with its own engine vs ``args.runners`` runners sharing one engine (see
    the module docstring): the same ``args.episodes`` tasks, greedy, ``args.live`` live
    episodes per runner, each engine on ``args.threads`` threads. Start-up is not timed."""
    import os

    if "vllm" in args.engines:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}" if args.threads > 1 else "0")
    model_config = {"model": args.model, "max_new_tokens": args.max_new_tokens, "response_prefix": "[",
                    "stop_strings": ["]"]}
    tasks = list(range(10**6, 10**6 + args.episodes))
    shards = [tasks[i :: args.runners] for i in range(args.runners)]
    figures = {}
    import ray

    ray.init(num_cpus=args.runners + 2 * args.threads, include_dashboard=False, log_to_driver=False)
    for engine_kind in args.engines:
        engine = {"kind": engine_kind, "num_engines": 1, "num_cpus_per_engine": args.threads, "num_gpus_per_engine": _gpus()}
        shared_config = {**model_config, "engine": engine}
        own_config = {**model_config, "engine": engine_kind}  # the runner generates itself (today's default)
        from rllib_seeupo.llm.engine_actor import start_engines

        [shared] = start_engines(shared_config, torch_threads=args.threads)
        own = ray.remote(num_cpus=args.threads)(Runner).remote(own_config, threads=args.threads)
        clients = [ray.remote(num_cpus=1)(Runner).remote(shared_config, engine=shared) for _ in shards]
        ray.get([shared.info.remote(), own.ready.remote()] + [c.ready.remote() for c in clients])  # started
        runs = {"own_engine": lambda: ray.get([own.play.remote(tasks, args.live)]),
                "shared_engine": lambda: ray.get([c.play.remote(t, args.live) for c, t in zip(clients, shards)])}
        info = lambda: ray.get(shared.info.remote())  # noqa: E731
        figures[engine_kind] = {}
        for mode, run in runs.items():
            times, token_counts, per_batch = [], [], []
            for _ in range(args.repeats):
                before = info()
                start = time.perf_counter()
                results = run()
                times.append(time.perf_counter() - start)
                after = info()
                token_counts.append(sum(r["tokens"] for r in results))
                batches = after["batches"] - before["batches"]
                per_batch.append((after["requests"] - before["requests"]) / batches if batches else None)
            seconds = statistics.median(times)
            figures[engine_kind][mode] = f = {
                "runners": 1 if mode == "own_engine" else args.runners,
                "seconds": seconds,
                "episodes_per_s": args.episodes / seconds,
                "tokens_per_s": statistics.median(token_counts) / seconds,
                "tokens": statistics.median(token_counts),
                "requests_per_engine_batch": per_batch[-1],
                "success_rate": sum(r["successes"] for r in results) / args.episodes,
            }
            batching = f"  {f['requests_per_engine_batch']:.2f} requests per engine batch" if per_batch[-1] else ""
            print(f"{engine_kind:12s} {mode:14s} {f['runners']} runner(s) {seconds:7.1f} s  {f['episodes_per_s']:.3f} "
                  f"episodes/s  {f['tokens_per_s']:.1f} tokens/s{batching}  success {f['success_rate']:.2f}", flush=True)
        runs = figures[engine_kind]
        runs["shared_over_own"] = runs["own_engine"]["seconds"] / runs["shared_engine"]["seconds"]
        print(f"speedup {engine_kind}_shared_engine_over_own_engine {runs['shared_over_own']:.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **figures}, f, indent=2)


def _gpus() -> int:
    import torch

    return 1 if torch.cuda.is_available() else 0


class Runner:
    """One env runner's generation side: plays tasks greedily, ``live`` at a time, with a
    model of its own (``model_config`` without engine actors) or, given ``engine`` (an
    engine actor's handle, or a ``RolloutEngine`` object), through it with a tokenizer only."""

    def __init__(self, model_config: dict, engine=None, threads: int | None = None):
        import torch

        from envs.text import AnyText
        from rllib_seeupo.llm.module import LLMRLModule

        if threads:
            torch.set_num_threads(threads)
        self.module = LLMRLModule(observation_space=AnyText(10**6), action_space=AnyText(4000), inference_only=True,
                                  model_config=model_config)
        if engine is not None:
            self.module.attach_engine(engine)
        else:
            if torch.cuda.is_available() and self.module.settings["engine"]["kind"] == "transformers":
                self.module.to("cuda")
            self.module.generate([[self.module.tokenizer.eos_token_id]], sample=False)  # vLLM: start it

    def ready(self) -> bool:
        return True

    def play(self, tasks: list[int], live: int) -> dict:
        from rllib_seeupo.evaluation import evaluate

        tokens = [0]

        def policy(observations, sample):
            out = self.module.generate([self.module.encode_prompt(o) for o in observations], sample=sample)
            tokens[0] += sum(len(o["response_ids"]) for o in out)
            return [o["text"] for o in out]

        result = evaluate(policy, "tool_tasks", {"max_turns": 3}, tasks, batch_size=live)
        return {"tokens": tokens[0], "successes": result["success_rate"] * len(tasks)}


def raw_shared_engine_comparison(args) -> None:
    """``--no-ray``: one runner calling its own model against ``args.runners`` runners (threads)
    sharing one ``BatchingEngine`` over the same model; random prompts, sampled responses of
    ``--max-new-tokens`` tokens (a random model seldom ends one early)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from gpu_scale import QWEN3_8B, TINY, build_model, build_tokenizer, synchronize
    from rllib_seeupo.llm.core import StandalonePolicy
    from rllib_seeupo.llm.engine_actor import BatchingEngine

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        raise SystemExit("--no-ray needs a GPU (use --tiny on CPU)")
    torch.set_num_threads(args.threads)
    shape, dtype = (TINY, torch.float32) if args.tiny else (QWEN3_8B, torch.bfloat16)
    model = build_model(shape, device, dtype, checkpointing=False)
    model.eval()
    policy = StandalonePolicy(model, build_tokenizer(), max_new_tokens=args.max_new_tokens,
                              max_prompt_tokens=args.prompt_tokens, pack_tokens=max(512, args.prompt_tokens))

    @torch.no_grad()
    def generate(prompts, sample, seeds):
        responses, _ = policy.decode(prompts, sample=sample, seeds=seeds)
        synchronize(device)
        return [{"response_ids": r} for r in responses]

    engine = BatchingEngine(generate)

    def runner(index: int, call) -> int:
        tokens, generator = 0, torch.Generator().manual_seed(index)  # runner 0's prompts in both modes
        for turn in range(args.turns):
            prompts = torch.randint(10, shape["vocab_size"], (args.live, args.prompt_tokens), generator=generator).tolist()
            seeds = [hash((index, turn, i)) % 2**31 for i in range(args.live)]
            tokens += sum(len(r["response_ids"]) for r in call(prompts, True, seeds))
        return tokens

    generate([[10] * args.prompt_tokens], True, [0])  # warm-up
    runs = {"own_engine": (1, generate), "shared_engine": (args.runners, engine.generate)}
    figures = {}
    for mode, (count, call) in runs.items():
        before = dict(engine.counts)
        start = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            tokens = sum(pool.map(lambda i: runner(i, call), range(count)))
        seconds = time.perf_counter() - start
        batches = engine.counts["batches"] - before["batches"]
        figures[mode] = f = {
            "runners": count, "seconds": seconds, "turns_per_s": count * args.turns / seconds,
            "tokens_per_s": tokens / seconds, "tokens": tokens,
            "requests_per_engine_batch": (engine.counts["requests"] - before["requests"]) / batches if batches else None,
        }
        batching = f"  {f['requests_per_engine_batch']:.2f} requests per engine batch" if batches else ""
        print(f"{mode:14s} {count} runner(s) x {args.live} live  {seconds:7.1f} s  {f['turns_per_s']:.2f} turns/s  "
              f"{f['tokens_per_s']:.1f} tokens/s{batching}", flush=True)
    figures["shared_over_own_tokens_per_s"] = figures["shared_engine"]["tokens_per_s"] / figures["own_engine"]["tokens_per_s"]
    print(f"speedup shared_engine_over_own_engine (tokens/s) {figures['shared_over_own_tokens_per_s']:.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "device": str(device), **figures}, f, indent=2)


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
