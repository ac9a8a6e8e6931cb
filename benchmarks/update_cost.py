"""Cost of SeeUPO's sequential turn updates vs one parallel update, on the same batch.

Samples one batch of episodes with the algorithm built from a tuned example, then updates
the policy from that batch again and again, alternating the two schedules, from the same
saved learner state (weights and optimizer) each time:

- ``reverse``: one learner update per turn (T-1 ... 0), pi_old taken from each update's own
  forward pass, and after each turn but the last a no-grad pass over that turn's rows for
  HAPPO's compound factor M (SeeUPO, docs/design.md section 1.4);
- ``parallel``: every turn's rows in one learner update (the GRPO/GSPO schedule).

Reports the median seconds of each (>= 5 interleaved repeats after one warm-up each), where
the time goes (``SeeUPO.update_policy``'s phase timers: building the batches, log-prob
recomputation, the learner's forward, backward and optimizer step, RLlib's per-update
plumbing, the M update), and the padded token count each schedule feeds the model. The
last line is ``ratio <reverse seconds / parallel seconds>``.

    python benchmarks/update_cost.py                                    # tiny LLM, tool_tasks
    python benchmarks/update_cost.py --model smollm2-135m-instruct --threads 2
    python benchmarks/update_cost.py --env bandit --set env_config.num_turns=4
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
TUNED_EXAMPLES = {
    "tool_tasks": ROOT / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml",
    "bandit": ROOT / "tuned_examples" / "bandit_seeupo.yaml",
}
ORDERS = ("reverse", "parallel")
PHASES = (
    "collate", "logp_recompute", "forward", "backward", "optimizer_step", "learner_overhead",
    "compound_update", "metrics", "other",
)


def build_algorithm(args):
    from rllib_seeupo.experiment import build_config, load_experiment

    overrides = [f"seed={args.seed}"]
    if args.env == "tool_tasks":
        model = args.model
        if model == "tiny":
            from rllib_seeupo.llm.tiny import build_tiny_model

            model = build_tiny_model(Path(tempfile.gettempdir()) / "rllib_seeupo_tiny_model")
        overrides.append(f"model_config.model={model}")
        if args.lora_rank == 0:
            overrides.append("model_config.lora=null")
        elif args.lora_rank is not None:
            overrides.append(f"model_config.lora.rank={args.lora_rank}")
    # No held-out evaluation: only the updates are timed.
    experiment = load_experiment(TUNED_EXAMPLES[args.env], ["evaluation=null", *overrides, *args.set])
    return experiment, build_config(experiment).build_algo()


def padded_tokens(algo, rollouts, order: str) -> int:
    """Token positions (prompt + response, padding included) that one pass over the batch
    feeds the model under ``order``: a per-turn batch pads to its own turn's longest prompt,
    the parallel batch to the longest prompt of any turn. A tabular row counts as one."""
    from rllib_seeupo import objectives

    turns = sorted({k for r in rollouts for k in r.turns})
    module_class = algo.config.rl_module_spec.module_class
    total = 0
    for group in objectives.update_schedule(order, turns):
        columns = module_class.collate_turn_rows([r.turns[k] for k in group for r in rollouts if k in r.turns])
        rows = len(columns["response_mask"])
        total += rows * (columns["prompt_ids"].shape[1] + columns["response_ids"].shape[1]) if "prompt_ids" in columns else rows
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(TUNED_EXAMPLES), default="tool_tasks")
    parser.add_argument("--model", default="tiny", help="tool_tasks only: 'tiny' (random, built locally), "
                        "a packaged alias such as smollm2-135m-instruct, or a model folder")
    parser.add_argument("--lora-rank", type=int, default=None, help="tool_tasks only: LoRA rank (0: full fine-tuning); "
                        "default: the tuned example's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="override a tuned-example setting, as in the CLI")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    import numpy as np
    import ray
    import torch

    torch.set_num_threads(args.threads)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    experiment, algo = build_algorithm(args)
    try:
        rng = np.random.default_rng(args.seed)
        start = time.perf_counter()
        rollouts, advantages = algo.sample_rollouts(rng)
        rows_per_turn = dict(sorted(collections.Counter(k for r in rollouts for k in r.turns).items()))
        print(f"{experiment.name}: {len(rollouts)} rollouts, rows per turn {rows_per_turn}, "
              f"sampled in {time.perf_counter() - start:.1f} s", flush=True)
        state = algo.learner_group.get_state()
        seconds: dict[str, list[dict[str, float]]] = {order: [] for order in ORDERS}
        for repeat in range(args.repeats + 1):  # repeat 0 is a warm-up
            # Alternate which schedule goes first so that neither always runs on a warm cache.
            for order in ORDERS if repeat % 2 == 0 else ORDERS[::-1]:
                algo.learner_group.set_state(state)
                timings = algo.update_policy(rollouts, advantages, rng, update_order=order)
                if repeat:
                    seconds[order].append(timings)
            if repeat:
                print(f"repeat {repeat}: " + "  ".join(f"{o} {seconds[o][-1]['total']:.3f} s" for o in ORDERS), flush=True)

        medians = {o: {p: statistics.median(t[p] for t in seconds[o]) for p in (*PHASES, "total")} for o in ORDERS}
        tokens = {o: padded_tokens(algo, rollouts, o) for o in ORDERS}
        ratio = medians["reverse"]["total"] / medians["parallel"]["total"]
        print()
        print(f"median of {args.repeats} (s)   " + "".join(f"{o:>10s}" for o in ORDERS) + "  reverse-parallel")
        for phase in (*PHASES, "total"):
            r, p = medians["reverse"][phase], medians["parallel"][phase]
            print(f"  {phase:18s}" + f"{r:10.3f}{p:10.3f}{r - p:+12.3f}")
        print(f"  {'padded tokens':18s}" + "".join(f"{tokens[o]:10d}" for o in ORDERS))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({
                "args": vars(args), "experiment": experiment.name, "num_rollouts": len(rollouts),
                "median_seconds": medians, "padded_tokens": tokens, "ratio": ratio,
                "repeats": {o: seconds[o] for o in ORDERS},
            }, indent=1))
        print(f"ratio {ratio:.3f}")
    finally:
        algo.stop()


if __name__ == "__main__":
    main()
