"""J/J* after a fixed budget for every update order x advantage normalisation on the bandit.

Each cell trains the tuned example ``tuned_examples/bandit_seeupo.yaml`` with one override
of ``update_order`` and ``advantage_norm`` for the same iteration budget, on the same
instances (one per seed), in one Ray session, and reports the mean and per-seed J/J*.

    python benchmarks/bandit_variants.py --num-turns 3 --iters 60 --seeds 0 1 2 --out results/bandit_variants_T3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ORDERS = ("reverse", "forward", "random", "parallel")
NORMS = ("batch", "none", "group_std", "leave_one_out")
TUNED_EXAMPLE = Path(__file__).resolve().parents[1] / "tuned_examples" / "bandit_seeupo.yaml"


def run_cell(order: str, norm: str, seed: int, args) -> float:
    from rllib_seeupo.experiment import build_config, load_experiment

    overrides = [
        f"update_order={order}",
        f"advantage_norm={norm}",
        f"seed={seed}",
        f"env_config.seed={seed}",
        f"env_config.num_turns={args.num_turns}",
        f"env_config.kind={args.kind}",
        *args.set,
    ]
    algo = build_config(load_experiment(TUNED_EXAMPLE, overrides)).build_algo()
    try:
        for _ in range(args.iters):
            result = algo.train()
        return float(result["optimality_ratio"])
    finally:
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-turns", type=int, default=3)
    parser.add_argument("--kind", default="needle")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--orders", nargs="+", default=list(ORDERS))
    parser.add_argument("--norms", nargs="+", default=list(NORMS))
    parser.add_argument("--set", action="append", default=[], help="extra override, as in the CLI")
    parser.add_argument("--out", default="results/bandit_variants")
    args = parser.parse_args()

    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells_path = out / "cells.json"
    cells = json.loads(cells_path.read_text()) if cells_path.exists() else {}
    start = time.time()
    for order in args.orders:
        for norm in args.norms:
            for seed in args.seeds:
                key = f"{order}/{norm}/{seed}"
                if key in cells:  # resumable
                    continue
                cells[key] = run_cell(order, norm, seed, args)
                cells_path.write_text(json.dumps(cells, indent=1))
                print(f"{key}: J/J* {cells[key]:.3f}  ({time.time() - start:.0f} s)", flush=True)

    lines = [
        f"J/J* after {args.iters} iterations, bandit kind={args.kind} T={args.num_turns} K=3, "
        f"seeds {args.seeds} (mean; per seed in brackets)",
        "",
        "| update_order | " + " | ".join(args.norms) + " |",
        "|---|" + "---|" * len(args.norms),
    ]
    for order in args.orders:
        row = []
        for norm in args.norms:
            values = [cells[f"{order}/{norm}/{s}"] for s in args.seeds]
            row.append(f"{sum(values) / len(values):.3f} [{', '.join(f'{v:.2f}' for v in values)}]")
        lines.append(f"| {order} | " + " | ".join(row) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
