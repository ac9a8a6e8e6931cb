"""The learner's forward and backward on turn minibatches of real rollouts.

Plays held-out tasks of the embedded env with SmolLM2, sampling as the main job does, and
keeps every turn's row (prompt ids, response ids, behaviour log-probs); then, for each turn,
times ``response_logp`` forward + backward over minibatches of ``--minibatch-size`` rows
(median over ``--repeats``) and counts the token positions a pass computes with the rows
padded to the widest one against the real ones (the head every prompt shares counted once). ``--rows`` stores the rows on the first run and reuses them after,
so two checkouts can be timed on the same rows:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_forward.py --rows results/train_rows.pkl
    OMP_NUM_THREADS=1 PYTHONPATH=<other checkout> .venv/bin/python <other checkout>/benchmarks/train_forward.py --rows results/train_rows.pkl
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import time


def collect_rows(module, episodes: int, max_turns: int) -> list[dict]:
    import numpy as np
    import torch

    from rllib_seeupo.evaluation import evaluate
    from rllib_seeupo.llm.module import PROMPT_IDS, RESPONSE_IDS
    from rllib_seeupo.modules.api import BEHAVIOUR_LOGP

    rows, calls = [], [0]

    def policy(observations, sample):
        # Every episode is live from the first call, so call k plays turn k of each.
        with torch.no_grad():
            out = module._forward_exploration({"obs": np.array(observations, dtype=object)})
        for i in range(len(observations)):
            rows.append({"turn": calls[0], PROMPT_IDS: out[PROMPT_IDS][i], RESPONSE_IDS: out[RESPONSE_IDS][i],
                         BEHAVIOUR_LOGP: out[BEHAVIOUR_LOGP][i]})
        calls[0] += 1
        return [str(a) for a in out["actions"]]

    torch.manual_seed(0)
    evaluate(policy, "tool_tasks", {"max_turns": max_turns}, list(range(10**6, 10**6 + episodes)), sample=True, batch_size=episodes)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--minibatch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default=None, help="pickle of the rows: written if missing, read if present")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from envs.text import AnyText
    from rllib_seeupo.llm.module import PROMPT_IDS, RESPONSE_IDS, LLMRLModule
    from rllib_seeupo.modules.api import RESPONSE_MASK

    module = LLMRLModule(
        observation_space=AnyText(10**6),
        action_space=AnyText(4000),
        model_config={
            "model": args.model, "max_new_tokens": 24, "temperature": 0.7, "response_prefix": "[", "stop_strings": ["]"],
            "lora": {"rank": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]},
        },
    )
    if args.rows and os.path.exists(args.rows):
        with open(args.rows, "rb") as f:
            rows = pickle.load(f)
    else:
        rows = collect_rows(module, args.episodes, args.max_turns)
        if args.rows:
            with open(args.rows, "wb") as f:
                pickle.dump(rows, f)
    minibatches = []
    for turn in sorted({r["turn"] for r in rows}):
        turn_rows = [r for r in rows if r["turn"] == turn]
        for start in range(0, len(turn_rows), args.minibatch_size):
            minibatches.append(turn_rows[start : start + args.minibatch_size])
    real = padded = 0
    batches = []
    for mb in minibatches:
        columns = LLMRLModule.collate_turn_rows(mb)
        # Positions one pass computes: the shared head once, then each row's remainder and
        # response, padded to the widest row or not.
        shared, rest = module._split_shared_head([list(r[PROMPT_IDS]) for r in mb])
        responses = [len(r[RESPONSE_IDS]) for r in mb]
        real += shared + sum(len(p) + n for p, n in zip(rest, responses))
        padded += shared + len(mb) * (max(len(p) for p in rest) + max(responses))
        batches.append({k: torch.as_tensor(v) for k, v in columns.items()})

    def one_pass():
        for batch in batches:
            module.model.zero_grad()
            logp = module.response_logp(batch)
            torch.where(batch[RESPONSE_MASK], logp, 0).sum().backward()

    one_pass()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    figures = {
        "rows": len(rows), "minibatches": len(batches), "positions_real": real, "positions_padded": padded,
        "seconds_per_pass": statistics.median(times), "seconds_all": times,
    }
    print(f"{len(rows)} rows in {len(batches)} minibatches; positions {real} real, {padded} padded "
          f"({1 - real / padded:.0%} padding); forward+backward over all: {figures['seconds_per_pass']:.2f} s "
          f"(median of {args.repeats})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), **figures}, f, indent=2)


if __name__ == "__main__":
    main()
