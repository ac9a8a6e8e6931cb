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

import yaml

from rllib_seeupo.experiment import (
    ConfigError,
    Experiment,
    algorithm_class,
    build_config,
    check_env,
    load_experiment,
    parse_key_value,
    prepare_warm_start,
    search_space,
    validate_experiment,
)
from rllib_seeupo.reporting import (
    BudgetStop,
    RunRecorder,
    missing_stop_keys,
    plot_learning_curve,
    progress_line,
    read_summary,
    should_stop,
    write_summary,
)


def _init_ray() -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="WARNING")


class _InProcessTrial:
    """What Tune's logger callbacks read of a trial, for a run outside Tune: they then write
    the files of a Tune trial (``events.out.tfevents.*``, ``result.json``, ``progress.csv``,
    ``params.json``) into ``local_path``."""

    def __init__(self, local_path: Path, config: dict[str, Any]):
        self.local_path = str(local_path)
        self.config = config
        self.evaluated_params: dict[str, Any] = {}
        self.trial_id = None
        self.checkpoint = None  # nothing to restore the logs from

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def _result_loggers():
    """Tune's default logger callbacks (CSV, JSON, TensorBoard), as every Tune trial gets."""
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    loggers = []
    for cls in DEFAULT_CALLBACK_CLASSES:
        try:
            loggers.append(cls())
        except ImportError:  # TensorBoard's writer (tensorboardX) is not installed
            pass
    return loggers


def _print_before(recorder: RunRecorder, prefix: str = "") -> None:
    before = recorder.evaluation.get("before")
    if before is not None and len(recorder.records) == 1:
        print(f"{prefix}held-out before training: success {before['success_rate']:.3f} "
              f"on {before['num_episodes']} episodes", flush=True)


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
    # Held-out evaluation is the algorithm's (RLlib's evaluation config, see
    # `rllib_seeupo.evaluation`): before training when it is built, then in the iterations
    # of its interval, so the records carry what a Tune trial's results carry.
    algo = config.build_algo()
    recorder = RunRecorder(experiment.metric)
    trial = _InProcessTrial(out_dir / experiment.name / "in_process", config.to_dict())
    loggers = _result_loggers()
    trial.init_local_path()
    for logger in loggers:
        logger.log_trial_start(trial)
    start = time.time()
    checkpoint = out_dir / "checkpoint"
    try:
        while True:
            result = algo.train()
            record = recorder.add(result)
            for logger in loggers:
                logger.log_trial_result(algo.iteration, trial, result)
            _print_before(recorder)
            print(progress_line(record), flush=True)
            if len(recorder.records) == 1:
                _check_stop_keys(record, result, experiment.stop)
            if experiment.checkpoint_freq and algo.iteration % experiment.checkpoint_freq == 0:
                algo.save_to_path(checkpoint.resolve())
            if should_stop(record, result, experiment.stop) or not experiment.stop:
                break
        if experiment.evaluation and "evaluation/success_rate" not in recorder.records[-1]:
            # The last iteration was not one of the evaluation interval's (a stop on env
            # steps or a metric): measure the trained policy now.
            metrics = algo.evaluate()
            recorder.add_evaluation(metrics)
            print(f"   held-out after training: {metrics['success_rate']:.3f}", flush=True)
            step = {k: result[k] for k in ("training_iteration", "timesteps_total") if k in result}
            for logger in loggers:
                if type(logger).__name__ == "TBXLoggerCallback":  # the other files keep one row per iteration
                    logger.log_trial_result(algo.iteration, trial, {**step, "evaluation": metrics})
        algo.save_to_path(checkpoint.resolve())
    finally:
        for logger in loggers:
            logger.log_trial_end(trial)
        algo.stop()
    run = recorder.summary()
    return {
        **run,
        "wall_time_s": time.time() - start,
        "checkpoint": str(checkpoint),
        "tensorboard": str(out_dir),
        # The shape of a Tune run's summary: this run is its one trial.
        "best_trial": None,
        "trials": [{"trial_id": None, "config": {}, "final": run["final"], "checkpoint": str(checkpoint)}],
    }


def _check_stop_keys(record: dict[str, float], result: dict[str, Any], stop: dict[str, Any]) -> None:
    """After the first iteration: a stop key that is in no result is noted (as Tune does);
    when none of them is, the run could never stop, so it ends here."""
    missing = missing_stop_keys(record, result, stop)
    if not missing:
        return
    available = sorted({*record, *(k for k, v in result.items() if not isinstance(v, dict))})
    if len(missing) == len(stop):
        raise ConfigError(
            f"stop key(s) {missing} are in no training result, so the run would never stop; "
            f"use result keys ('/' nests), e.g. {available}"
        )
    print(f"note: stop key(s) {missing} are not in the training results", file=sys.stderr, flush=True)


def check_output_dir(path: Path, flag: str = "--output-dir") -> None:
    """``path`` can be (or become) a folder: neither it nor a parent is an existing file."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is an existing file" if folder == path else f"is inside {str(folder)!r}, an existing file"
                raise ConfigError(f"{flag} {str(path)!r} {what}, not a folder")
            if not os.access(folder, os.W_OK):
                raise ConfigError(f"{flag} {str(path)!r}: {str(folder)!r} is not writable")
            return


def train_with_tune(experiment: Experiment, out_dir: Path) -> dict[str, Any]:
    """Run the experiment (and any grid in it) as Tune trials; summarise the best one: the
    trial with the best last value of ``experiment.metric`` (held-out figures count where
    they were measured), among the trials that report it."""
    from ray import tune

    _init_ray()
    recorders: dict[str, RunRecorder] = {}

    class Progress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            recorder = recorders.setdefault(trial.trial_id, RunRecorder(experiment.metric))
            record = recorder.add(result)
            prefix = f"[{trial.trial_id}] " if len(trials) > 1 else ""
            _print_before(recorder, prefix)
            print(prefix + progress_line(record), flush=True)

    config = build_config(experiment)
    param_space = config.to_dict()
    # A search axis inside model_config: the config dict holds it as `_model_config`.
    space_keys = {key: "_model_config" if key == "model_config" else key for key in search_space(experiment)}
    param_space.update({space_keys[k]: v for k, v in search_space(experiment).items()})
    start = time.time()
    tuner = tune.Tuner(
        algorithm_class(experiment.run),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=experiment.num_samples),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(out_dir.resolve()),
            # The in-process run's stop rule (the record's keys, e.g. env_steps, and '/' nesting).
            stop=BudgetStop(experiment.stop or {"training_iteration": 1}),
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
    trials, checkpoints = [], {}
    for result in grid:
        trial_id = result.metrics.get("trial_id")
        checkpoints[trial_id] = str(result.checkpoint.path) if result.checkpoint else None
        trials.append(
            {
                "trial_id": trial_id,
                "config": {k: result.config.get(key) for k, key in space_keys.items()},
                "final": recorders.get(trial_id, RunRecorder()).final(),
                "checkpoint": checkpoints[trial_id],
            }
        )
    scored = [(recorders[t["trial_id"]].metric_value, i) for i, t in enumerate(trials)
              if t["trial_id"] in recorders and recorders[t["trial_id"]].metric_value is not None]
    sign = 1 if experiment.mode == "max" else -1
    if scored:
        best_id = trials[max(scored, key=lambda vi: (sign * vi[0], -vi[1]))[1]]["trial_id"]
    else:
        best_id = trials[0]["trial_id"]
        print(f"note: no trial reported the metric {experiment.metric!r} (set 'metric:' to a result key); "
              f"summarising the first trial", file=sys.stderr)
    return {
        **recorders[best_id].summary(),
        "wall_time_s": time.time() - start,
        "checkpoint": checkpoints.get(best_id),
        "tensorboard": str(out_dir),
        "best_trial": best_id,
        "trials": trials,
    }


def check_cpus(experiment, config, where) -> None:
    """Fail, naming the settings, when the run asks Ray for more CPUs than the Ray it will use
    has (this machine's, unless ``RAY_ADDRESS`` names a cluster): its actors would wait for
    them forever, Tune's trial without a word but a warning a minute."""
    if os.environ.get("RAY_ADDRESS"):
        return
    import ray

    bundles = algorithm_class(experiment.run).default_resource_request(config).bundles
    asked = sum(b.get("CPU", 0) for b in bundles)
    if ray.is_initialized():
        have = ray.cluster_resources().get("CPU", 0)
    else:
        try:
            from ray._private.utils import get_num_cpus

            have = get_num_cpus()
        except Exception:  # noqa: BLE001 (a private helper that may move: count the cores)
            have = os.cpu_count() or 1
    if asked > have:
        raise ConfigError(f"{where}: the run asks Ray for {asked:g} CPUs and this machine has {have:g}; lower "
                          "num_env_runners, num_cpus_per_env_runner, num_learners or model_config.engine."
                          "num_cpus_per_engine (train --dry-run lists them), or set RAY_ADDRESS to a cluster")


def cmd_train(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.file, args.set or [])
    if args.stop_iters is not None:
        experiment.stop["training_iteration"] = args.stop_iters
    out_dir = Path(args.output_dir or Path("results") / experiment.name)
    check_output_dir(out_dir)
    # Validate before any Ray start-up or output: a wrong config fails in seconds, naming
    # the field (the config's settings, then the env built once and the model's name).
    config = build_config(experiment)
    config.validate()
    validate_experiment(experiment, args.file)
    if args.dry_run:
        print_dry_run(experiment, config)
        return 0
    check_cpus(experiment, config, args.file)
    warm = prepare_warm_start(experiment)
    if warm:
        print(f"warm start: {warm['path']} (loss {warm['loss'][0]:.3f} -> {warm['loss'][-1]:.3f})", flush=True)
    use_tune = not args.no_tune or experiment.has_search_space()
    if args.no_tune and experiment.has_search_space():
        print("note: the experiment has a search space, so it runs through Tune", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{experiment.run} on {experiment.env}: {experiment.name} -> {out_dir}", flush=True)
    run = train_with_tune(experiment, out_dir) if use_tune else train_in_process(experiment, out_dir)
    summary = {
        "experiment": experiment.name,
        "algorithm": experiment.run,
        "env": experiment.env,
        "config_file": str(args.file),
        "overrides": list(args.set or []),
        "metric": experiment.metric,
        "mode": experiment.mode,
        **({"warm_start": warm} if warm else {}),
        **run,
    }
    write_summary(out_dir, summary)
    plot = plot_learning_curve(
        summary["iterations"], out_dir / "learning_curve.png", f"{experiment.run} on {experiment.env}",
        summary.get("evaluation"),
    )
    print_summary(summary, out_dir, plot)
    return 0


def print_dry_run(experiment: Experiment, config) -> None:
    """The resolved settings, the Ray resources of every actor and the learner's memory
    estimate (``rllib_seeupo.placement``); nothing is built and Ray is not started."""
    from rllib_seeupo.placement import report

    print(f"{experiment.run} on {experiment.env}: {experiment.name} (dry run: nothing is built)")
    print("stop: " + ", ".join(f"{k}={v}" for k, v in experiment.stop.items()))
    print("config:")
    print(yaml.safe_dump(experiment.config, sort_keys=True, default_flow_style=False).rstrip().replace("\n", "\n  ").join(["  ", ""]))
    print(report(config))


def print_summary(summary: dict[str, Any], out_dir: Path, plot: Path) -> None:
    from rllib_seeupo.evaluation import markdown_table

    final = summary["final"]
    first = summary["iterations"][0] if summary["iterations"] else {}
    print()
    print(f"== {summary['algorithm']} on {summary['env']}: {len(summary['iterations'])} iterations "
          f"in {summary['wall_time_s']:.0f} s")
    for key in ("reward_mean", "optimality_ratio", "eval_success_before", "eval_success_after"):
        if key in final:
            start = f" (first iteration {first[key]:.3f})" if key in first else ""
            print(f"   {key}: {final[key]:.3f}{start}")
    for when, figures in (summary.get("evaluation") or {}).items():
        if "num_episodes" in figures and "k" in figures:
            at = f" (iteration {figures['iteration']})" if "iteration" in figures else ""
            print(f"\n   held-out {when} training{at}:")
            print("".join(f"   {line}\n" for line in markdown_table(figures).splitlines()), end="")
    if summary.get("best_trial"):
        print(f"   best trial: {summary['best_trial']} (by {summary.get('metric')}, {summary.get('mode')})")
    print(f"   summary: {out_dir / 'summary.json'}")
    print(f"   plot:    {plot}")
    if summary.get("tensorboard"):
        print(f"   tensorboard --logdir {summary['tensorboard']}")
    if summary.get("checkpoint"):
        print(f"   checkpoint: {summary['checkpoint']}")


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    values = {}
    for item in items or []:
        path, value = parse_key_value(item, flag)
        if len(path) > 1:
            raise ConfigError(f"{flag} {item!r}: expected a plain key=value (no '.' in the key)")
        values[path[0]] = value
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a model or checkpoint on an env's held-out split; write eval.json and eval.md."""
    from rllib_seeupo.evaluation import check_model_spec

    name = args.env.removeprefix("seeupo/")
    env_config = _key_values(args.env_config, "--env-config")
    if args.categories:
        env_config["categories"] = [c for item in args.categories for c in item.split(",") if c]
    model_config = _key_values(args.model_config, "--model-config")
    out_dir = Path(args.output_dir)
    check_output_dir(out_dir)
    check_model_spec(args.model, model_config)
    # Build the env first (once, not reset): a wrong env or env setting fails before a model loads.
    env = check_env(f"seeupo/{name}", env_config, where="--env-config")
    try:
        task_ids = env.unwrapped.task_ids(args.split)
    except (ValueError, KeyError, OSError) as error:
        raise ConfigError(f"--split {args.split!r}: {error}") from None
    # Sliced before listed: a split may be a lazy sequence (tool_tasks' train split).
    task_ids = list(task_ids[: args.episodes] if args.episodes is not None else task_ids)
    if not task_ids:
        raise ConfigError(f"no tasks in split {args.split!r} of {args.env}")

    import torch

    from rllib_seeupo.evaluation import evaluate, load_module, markdown_table, module_policy, progress_bar

    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_module(args.model, model_config)
    print(f"eval {args.model} on {args.env} ({args.split}): {len(task_ids)} tasks x k={args.k}", flush=True)
    result = evaluate(
        module_policy(module), name, env_config, task_ids, k=args.k, sample=args.k > 1 or args.sample,
        batch_size=args.batch_size, progress=progress_bar("   eval"),
    )
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
    summary = read_summary(args.summary)
    out = Path(args.output or Path(args.summary).with_name("learning_curve.png"))
    if out.is_dir():
        raise ConfigError(f"--output {str(out)!r} is a folder; give a file name such as learning_curve.png")
    check_output_dir(out.parent, "--output")
    _check_image_format(out)
    plot_learning_curve(summary["iterations"], out, f"{summary['algorithm']} on {summary['env']}", summary.get("evaluation"))
    print(out)
    return 0


def _check_image_format(path: Path) -> None:
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        raise ConfigError(f"--output {str(path)!r}: unknown image format {suffix!r}; allowed: {', '.join(sorted(formats))}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m rllib_seeupo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run a YAML tuned example")
    train.add_argument("file", help="tuned-example YAML")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. lr=0.1 or stop.training_iteration=5")
    train.add_argument("--stop-iters", type=_positive_int, help="stop after this many iterations")
    train.add_argument("--output-dir", help="where summary.json, the plot and checkpoints go")
    train.add_argument("--no-tune", action="store_true", help="train in this process instead of as a Tune trial")
    train.add_argument("--dry-run", action="store_true",
                       help="validate, then print the resolved config, the Ray resources and the learner's memory estimate; build nothing")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a model or checkpoint on an env's held-out tasks")
    ev.add_argument("--env", required=True, help="tool_tasks, bfcl, appworld, ... (with or without 'seeupo/')")
    ev.add_argument("--model", default="smollm2-135m-instruct",
                    help="algorithm or RLModule checkpoint, packaged alias, model folder or hf:<hub id>")
    ev.add_argument("--categories", action="append", help="env categories (BFCL), comma-separated")
    ev.add_argument("--split", default="test", help="task split (default: test)")
    ev.add_argument("--episodes", type=_positive_int, help="evaluate the first N tasks of the split (default: all)")
    ev.add_argument("--k", type=_positive_int, default=1, help="episodes per task; k > 1 samples (avg@k, pass@k)")
    ev.add_argument("--sample", action="store_true", help="sample even with k=1 (default: greedy)")
    ev.add_argument("--batch-size", type=_positive_int, default=32, help="episodes played at once")
    ev.add_argument("--env-config", action="append", metavar="KEY=VALUE", help="env setting, e.g. max_turns=3")
    ev.add_argument("--model-config", action="append", metavar="KEY=VALUE", help="module setting, e.g. max_new_tokens=64")
    ev.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's)")
    ev.add_argument("--output-dir", required=True, help="where eval.json and eval.md go")
    ev.set_defaults(func=cmd_eval)

    plot = sub.add_parser("plot", help="redraw learning_curve.png from a summary.json")
    plot.add_argument("summary")
    plot.add_argument("--output")
    plot.set_defaults(func=cmd_plot)

    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or a usage error (2, already printed)
        return exit.code if isinstance(exit.code, int) else 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
