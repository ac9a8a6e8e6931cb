"""Command line: ``python -m rllib_seeupo train FILE.yaml``, ``eval`` and ``plot``.

Ray 2.60 ships neither an ``rllib`` CLI nor YAML tuned examples for the new API stack;
this is the small replacement for both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rllib_seeupo.experiment import Experiment, algorithm_class, build_config, load_experiment, search_space
from rllib_seeupo.reporting import (
    iteration_record,
    plot_learning_curve,
    progress_line,
    should_stop,
    write_summary,
)


def _init_ray() -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="WARNING")


def _final(records: list[dict[str, float]]) -> dict[str, float]:
    final = dict(records[-1]) if records else {}
    for key in ("optimality_ratio", "reward_mean"):
        values = [r[key] for r in records if key in r]
        if values:
            final[f"best_{key}"] = max(values)
    return final


def evaluate_algorithm(algo, experiment: Experiment, label: str) -> dict[str, Any]:
    """Greedy held-out evaluation of the algorithm's current policy (``evaluation:`` key)."""
    from rllib_seeupo.evaluation import evaluate, module_policy
    from rllib_seeupo.turn_env import SHARED_MODULE_ID, make_turn_env

    spec = experiment.evaluation
    name = experiment.env.split("/", 1)[-1]
    env_config = dict(algo.config.env_config)
    task_ids = list(make_turn_env(name, env_config).task_ids(spec.get("split", "test")))[: int(spec.get("num_tasks", 100))]
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or time.time() - last[0] > 30:
            last[0] = time.time()
            print(f"   eval {label}: {done}/{total} episodes", flush=True)

    result = evaluate(
        module_policy(algo.get_module(SHARED_MODULE_ID)), name, env_config, task_ids,
        k=int(spec.get("k", 1)), batch_size=int(spec.get("batch_size", 64)), progress=progress,
    )
    print(f"   eval {label}: success {result['success_rate']:.3f} on {result['num_episodes']} episodes "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def train_in_process(experiment: Experiment, out_dir: Path) -> dict[str, Any]:
    """Build the algorithm here, train until ``stop``, checkpoint, summarise."""
    import torch

    # The algorithm runs in this process next to Ray's workers: by default one intra-op
    # thread (OMP_NUM_THREADS) avoids oversubscribing the cores; `torch_threads` in the
    # YAML overrides it for jobs (an LLM) whose work all happens here.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(experiment.torch_threads or int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        return _train_in_process(experiment, out_dir)
    finally:
        torch.set_num_threads(previous_threads)


def _train_in_process(experiment: Experiment, out_dir: Path) -> dict[str, Any]:
    _init_ray()
    config = build_config(experiment)
    algo = config.build_algo()
    records: list[dict[str, float]] = []
    start = time.time()
    checkpoint = out_dir / "checkpoint"
    evaluations = {}
    try:
        if experiment.evaluation and experiment.evaluation.get("before", True):
            evaluations["before"] = evaluate_algorithm(algo, experiment, "before training")
        while True:
            result = algo.train()
            record = iteration_record(result)
            records.append(record)
            print(progress_line(record), flush=True)
            if experiment.checkpoint_freq and algo.iteration % experiment.checkpoint_freq == 0:
                algo.save_to_path(checkpoint.resolve())
            if should_stop(record, result, experiment.stop) or not experiment.stop:
                break
        algo.save_to_path(checkpoint.resolve())
        if experiment.evaluation:
            evaluations["after"] = evaluate_algorithm(algo, experiment, "after training")
    finally:
        algo.stop()
    final = _final(records)
    for when, result in evaluations.items():
        final[f"eval_success_{when}"] = result["success_rate"]
    return {
        "iterations": records,
        "final": final,
        "evaluation": evaluations,
        "wall_time_s": time.time() - start,
        "checkpoint": str(checkpoint),
    }


def train_with_tune(experiment: Experiment, out_dir: Path) -> dict[str, Any]:
    """Run the experiment (and any grid in it) as Tune trials; summarise the best one."""
    from ray import tune

    _init_ray()
    per_trial: dict[str, list[dict[str, float]]] = {}

    class Progress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = iteration_record(result)
            per_trial.setdefault(trial.trial_id, []).append(record)
            prefix = f"[{trial.trial_id}] " if len(trials) > 1 else ""
            print(prefix + progress_line(record), flush=True)

    config = build_config(experiment)
    param_space = config.to_dict()
    param_space.update(search_space(experiment))
    start = time.time()
    tuner = tune.Tuner(
        algorithm_class(experiment.run),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=experiment.num_samples),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(out_dir.resolve()),
            stop=experiment.stop or {"training_iteration": 1},
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=experiment.checkpoint_freq, checkpoint_at_end=True
            ),
            callbacks=[Progress()],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed; first error: {errors[0]}")
    best = grid.get_best_result(metric=experiment.metric, mode=experiment.mode, scope="last")
    trials = []
    for result in grid:
        trial_id = result.metrics.get("trial_id")
        trials.append(
            {
                "trial_id": trial_id,
                "config": {k: result.config.get(k) for k in search_space(experiment)},
                "final": _final(per_trial.get(trial_id, [])),
                "checkpoint": str(result.checkpoint.path) if result.checkpoint else None,
            }
        )
    best_id = best.metrics.get("trial_id")
    records = per_trial.get(best_id, [])
    return {
        "iterations": records,
        "final": _final(records),
        "wall_time_s": time.time() - start,
        "checkpoint": str(best.checkpoint.path) if best.checkpoint else None,
        "best_trial": best_id,
        "trials": trials,
    }


def cmd_train(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.file, args.set or [])
    if args.stop_iters is not None:
        experiment.stop["training_iteration"] = args.stop_iters
    out_dir = Path(args.output_dir or Path("results") / experiment.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_tune = not args.no_tune or experiment.has_search_space()
    if args.no_tune and experiment.has_search_space():
        print("note: the experiment has a search space, so it runs through Tune", file=sys.stderr)
    # Validate before any Ray start-up: a wrong config fails in a second, naming the field.
    build_config(experiment).validate()
    print(f"{experiment.run} on {experiment.env}: {experiment.name} -> {out_dir}", flush=True)
    run = train_with_tune(experiment, out_dir) if use_tune else train_in_process(experiment, out_dir)
    summary = {
        "experiment": experiment.name,
        "algorithm": experiment.run,
        "env": experiment.env,
        "config_file": str(args.file),
        "overrides": list(args.set or []),
        **run,
    }
    write_summary(out_dir, summary)
    plot = plot_learning_curve(
        summary["iterations"], out_dir / "learning_curve.png", f"{experiment.run} on {experiment.env}",
        summary.get("evaluation"),
    )
    print_summary(summary, out_dir, plot)
    return 0


def print_summary(summary: dict[str, Any], out_dir: Path, plot: Path) -> None:
    final = summary["final"]
    first = summary["iterations"][0] if summary["iterations"] else {}
    print()
    print(f"== {summary['algorithm']} on {summary['env']}: {len(summary['iterations'])} iterations "
          f"in {summary['wall_time_s']:.0f} s")
    for key in ("reward_mean", "optimality_ratio", "eval_success_before", "eval_success_after"):
        if key in final:
            start = f" (first iteration {first[key]:.3f})" if key in first else ""
            print(f"   {key}: {final[key]:.3f}{start}")
    print(f"   summary: {out_dir / 'summary.json'}")
    print(f"   plot:    {plot}")
    if summary.get("checkpoint"):
        print(f"   checkpoint: {summary['checkpoint']}")


def progress_bar(label: str):
    """``progress(done, total)``: a bar redrawn in place on a terminal, a line per tenth
    of the work in a log."""
    start, shown = time.time(), [-1]
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if not tty and tenth == shown[0]:
            return
        shown[0] = tenth
        bar = "#" * (done * 30 // max(total, 1))
        line = f"{label} [{bar:<30}] {done}/{total} episodes, {time.time() - start:.0f} s"
        print(("\r" if tty else "") + line, end="" if tty and done < total else "\n", file=sys.stderr, flush=True)

    return progress


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    import yaml

    values = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        key, _, raw = item.partition("=")
        values[key.strip()] = yaml.safe_load(raw)
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a model or checkpoint on an env's held-out split; write eval.json and eval.md."""
    import torch

    from rllib_seeupo.evaluation import evaluate, load_module, markdown_table, module_policy
    from rllib_seeupo.turn_env import make_turn_env

    name = args.env.removeprefix("seeupo/")
    env_config = _key_values(args.env_config, "--env-config")
    if args.categories:
        env_config["categories"] = [c for item in args.categories for c in item.split(",") if c]
    model_config = _key_values(args.model_config, "--model-config")
    # Build the env first: a wrong env or env setting fails before a model loads.
    task_ids = list(make_turn_env(name, env_config).task_ids(args.split))
    if args.episodes is not None:
        task_ids = task_ids[: args.episodes]
    if not task_ids:
        raise ValueError(f"no tasks in split {args.split!r} of {args.env}")
    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_module(args.model, model_config)
    print(f"eval {args.model} on {args.env} ({args.split}): {len(task_ids)} tasks x k={args.k}", flush=True)
    result = evaluate(
        module_policy(module), name, env_config, task_ids, k=args.k, sample=args.k > 1 or args.sample,
        batch_size=args.batch_size, progress=progress_bar("   eval"),
    )
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model, "env": args.env, "env_config": env_config, "model_config": model_config,
        "split": args.split, "num_tasks": len(task_ids), "sampled": args.k > 1 or args.sample, **result,
    }
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown_table(result)
    (out_dir / "eval.md").write_text(f"# {args.model} on {args.env} ({args.split})\n\n{table}")
    print()
    print(table, end="")
    print(f"   {out_dir / 'eval.json'}\n   {out_dir / 'eval.md'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    summary = json.loads(Path(args.summary).read_text())
    out = Path(args.output or Path(args.summary).with_name("learning_curve.png"))
    plot_learning_curve(summary["iterations"], out, f"{summary['algorithm']} on {summary['env']}", summary.get("evaluation"))
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rllib_seeupo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run a YAML tuned example")
    train.add_argument("file", help="tuned-example YAML")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. lr=0.1 or stop.training_iteration=5")
    train.add_argument("--stop-iters", type=int, help="stop after this many iterations")
    train.add_argument("--output-dir", help="where summary.json, the plot and checkpoints go")
    train.add_argument("--no-tune", action="store_true", help="train in this process instead of as a Tune trial")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a model or checkpoint on an env's held-out tasks")
    ev.add_argument("--env", required=True, help="tool_tasks, bfcl, appworld, ... (with or without 'seeupo/')")
    ev.add_argument("--model", default="smollm2-135m-instruct",
                    help="algorithm or RLModule checkpoint, packaged alias, model folder or hub id")
    ev.add_argument("--categories", action="append", help="env categories (BFCL), comma-separated")
    ev.add_argument("--split", default="test", help="task split (default: test)")
    ev.add_argument("--episodes", type=int, help="evaluate the first N tasks of the split (default: all)")
    ev.add_argument("--k", type=int, default=1, help="episodes per task; k > 1 samples (avg@k, pass@k)")
    ev.add_argument("--sample", action="store_true", help="sample even with k=1 (default: greedy)")
    ev.add_argument("--batch-size", type=int, default=32, help="episodes played at once")
    ev.add_argument("--env-config", action="append", metavar="KEY=VALUE", help="env setting, e.g. max_turns=3")
    ev.add_argument("--model-config", action="append", metavar="KEY=VALUE", help="module setting, e.g. max_new_tokens=64")
    ev.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ev.add_argument("--output-dir", required=True, help="where eval.json and eval.md go")
    ev.set_defaults(func=cmd_eval)

    plot = sub.add_parser("plot", help="redraw learning_curve.png from a summary.json")
    plot.add_argument("summary")
    plot.add_argument("--output")
    plot.set_defaults(func=cmd_plot)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
