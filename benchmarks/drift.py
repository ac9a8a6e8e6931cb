"""Drift of one iteration's update from the rollout policy, per turn, under each schedule.

Every schedule is the tuned example plus its own overrides. Each is built afresh with the
same seed, so it samples the same first batch (checked), updates once from it, and then
``rllib_seeupo.diagnostics.policy_drift`` compares the new weights with the rollout policy
on that batch: per turn the k3 KL, the share of responses whose sequence ratio left the clip
range, the largest per-token log-ratio and the sum of the advantages. On the bandit the
exact J/J* after the update is reported too.

    python benchmarks/drift.py --example bandit_shared_seeupo --set minibatch_size=16 --set num_epochs_per_turn=2
    python benchmarks/drift.py --example tool_tasks_seeupo_smollm2 --model tiny
    python benchmarks/drift.py --schedule "mine=old_policy=rollout,compound_factor=cumulative"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
# Every schedule names its whole rule, so that a change of SeeUPOConfig's defaults does not
# change what a schedule measures; "default" is today's defaults (the shared-weight rule with
# GRPO's per-group std; the other four keep the batch-wide scale they were measured with).
_CLAMP = ["advantage_norm=batch", "advantage_clip_mode=clamp", "skip_zero_advantage_updates=false"]
SCHEDULES = {
    # name -> overrides on top of the tuned example
    "released": ["old_policy=current", "compound_factor=stepwise", *_CLAMP],
    "rollout_cumulative": ["old_policy=rollout", "compound_factor=cumulative", *_CLAMP],
    "default": ["advantage_norm=group_std", "old_policy=rollout", "compound_factor=cumulative",
                "skip_zero_advantage_updates=true"],
    "parallel": ["update_order=parallel", *_CLAMP],
    "forward": ["update_order=forward", "old_policy=current", "compound_factor=stepwise", *_CLAMP],
}


def batch_digest(rollouts) -> str:
    """A fingerprint of a batch (rewards and every turn's action), to check that two
    schedules replay the same one."""
    text = repr([(r.reward, [str(t.get("actions")) for _, t in sorted(r.turns.items())]) for r in rollouts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def drift_of(example: Path, overrides: list[str]) -> tuple[dict, str, float | None]:
    import numpy as np

    from rllib_seeupo import SHARED_MODULE_ID
    from rllib_seeupo.diagnostics import policy_drift
    from rllib_seeupo.experiment import build_config, load_experiment

    # No held-out evaluation: only the one update's drift is measured.
    algo = build_config(load_experiment(example, ["evaluation=null", *overrides])).build_algo()
    try:
        rng = np.random.default_rng([algo.config.seed or 0, 0])
        rollouts, advantages = algo.sample_rollouts(rng)
        algo.update_policy(rollouts, advantages, rng)
        drift = policy_drift(algo, rollouts, advantages)
        ratio = None
        if algo.config.env == "seeupo/bandit":
            from envs.bandit import raw_env

            instance = raw_env(**dict(algo.config.env_config)).instance
            module = algo.learner_group._learner.module[SHARED_MODULE_ID] if algo.learner_group.is_local else None
            if module is not None:
                ratio = instance.objective(module.action_probabilities()) / instance.optimal_objective()
        return drift, batch_digest(rollouts), ratio
    finally:
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="bandit_shared_seeupo", help="tuned example (file stem)")
    parser.add_argument("--schedule", action="append", default=[], help="NAME=KEY=VALUE[,KEY=VALUE...]; default: "
                        + ", ".join(SCHEDULES))
    parser.add_argument("--model", default=None, help="LLM examples: model_config.model ('tiny': built locally)")
    parser.add_argument("--set", action="append", default=[], help="override for every schedule, as in the CLI")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    import ray

    schedules = dict(SCHEDULES)
    if args.schedule:
        schedules = {}
        for item in args.schedule:
            name, _, rest = item.partition("=")
            schedules[name] = [x for x in rest.split(",") if x]
    common = list(args.set)
    if args.model:
        model = args.model
        if model == "tiny":
            from rllib_seeupo.llm.tiny import build_tiny_model

            model = build_tiny_model(Path(tempfile.gettempdir()) / "rllib_seeupo_tiny_model")
        common.append(f"model_config.model={model}")
    example = ROOT / "tuned_examples" / f"{args.example}.yaml"
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    results, digests = {}, set()
    for name, overrides in schedules.items():
        drift, digest, ratio = drift_of(example, common + overrides)
        digests.add(digest)
        results[name] = {"overrides": overrides, "drift": drift, "optimality_ratio": ratio}
    if len(digests) != 1:
        raise SystemExit(f"the schedules sampled different batches ({len(digests)}): settings that change sampling differ")
    print(f"{args.example} {' '.join(common)}: one batch ({digests.pop()}), drift from the rollout policy after one update")
    print("| schedule | turn | rows | k3 KL | outside clip | max token log-ratio | advantage sum | J/J* after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        for turn, d in result["drift"].items():
            ratio = "" if result["optimality_ratio"] is None else f"{result['optimality_ratio']:.3f}"
            print(f"| {name} | {turn} | {d['rows']} | {d['kl']:.5f} | {d['outside_clip']:.2f} | "
                  f"{d['max_token_log_ratio']:.3f} | {d['advantage_sum']:+.3f} | {ratio} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
