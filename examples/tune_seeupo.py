"""A small Tune sweep of SeeUPO on the tabular multi-turn bandit, from Python.

Importing ``rllib_seeupo`` registers ``SeeUPO`` (and the baselines) with Tune, so the
Tuner takes the algorithm by name. The grid crosses the learning rates given (default one)
with two update orders, SeeUPO's reverse order and the parallel update of the GRPO family
(2 trials by default, run side by side); each trial reports the exact optimality ratio
J/J* (``BanditOptimality``), and the best trial's last checkpoint is printed, ready for
``Algorithm.from_checkpoint``.

    python examples/tune_seeupo.py [--iters 12] [--lrs 0.03 0.1] [--output-dir results/tune_seeupo]

The same sweep as YAML: ``tuned_examples/bandit_seeupo_grid.yaml``
(``python -m rllib_seeupo train tuned_examples/bandit_seeupo_grid.yaml``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user Ray session
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread per trial is fastest

import ray  # noqa: E402
from ray import tune  # noqa: E402

import rllib_seeupo  # noqa: E402, F401  (registers "SeeUPO" with Tune)
from rllib_seeupo import SeeUPOConfig  # noqa: E402
from rllib_seeupo.callbacks import BanditOptimality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=12, help="training iterations per trial")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1], help="learning rates of the grid")
    parser.add_argument("--output-dir", default="results/tune_seeupo", help="Tune's storage folder")
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)  # trials' own logs stay in their folders

    config = (
        SeeUPOConfig()
        .environment(
            "seeupo/bandit",
            env_config={"num_turns": 3, "num_actions": 3, "num_contexts": 1, "kind": "needle", "observation": "full", "seed": 0},
        )
        .training(
            group_size=8,
            tasks_per_iteration=8,
            kl_coeff=0.0,
            lr=tune.grid_search(args.lrs),
            update_order=tune.grid_search(["reverse", "parallel"]),
        )
        .callbacks(BanditOptimality)
        .debugging(seed=0)
    )
    tuner = tune.Tuner(
        "SeeUPO",
        param_space=config,
        tune_config=tune.TuneConfig(metric="optimality_ratio", mode="max"),
        run_config=tune.RunConfig(
            name="tune_seeupo",
            storage_path=str(Path(args.output_dir).resolve()),
            stop={"training_iteration": args.iters},
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
            verbose=0,
        ),
    )
    results = tuner.fit()
    for result in sorted(results, key=lambda r: (r.config["lr"], r.config["update_order"])):
        print(
            f"lr {result.config['lr']:<5} update_order {result.config['update_order']:<8} "
            f"J/J* {result.metrics['optimality_ratio']:.3f}"
        )
    best = results.get_best_result(scope="last")
    print(f"best: lr {best.config['lr']}, update_order {best.config['update_order']}, "
          f"J/J* {best.metrics['optimality_ratio']:.3f}")
    print(f"best checkpoint: {best.checkpoint.path}")


if __name__ == "__main__":
    main()
