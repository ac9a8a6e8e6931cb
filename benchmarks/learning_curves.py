"""Learning curves of several algorithms x seeds at an equal budget of env steps.

Every run is a tuned example (``tuned_examples/<env>_<algorithm>[_<model>].yaml``) trained
in this process by the CLI's own loop (``rllib_seeupo.cli.train_in_process``) until it has
sampled ``--budget`` env steps, with ``seed=<k>`` (and ``env_config.seed=<k>`` where the
example's env has a seed: the same instances for every algorithm, a different one per
seed). Each finished run is stored as ``OUT/<env>/<algorithm>_seed<k>.json`` and never redone
(delete the file to redo it); then the script draws ``OUT/<env>/learning_curves.png`` (mean
and range over seeds per algorithm over env steps) and writes ``OUT/<env>/table.md``: final
value (mean +- std, the sample std with ddof 1), area under the curve (the curve's mean over
env steps), paired differences against a baseline with their 95% Student-t interval, and the
number of runs that collapsed (``collapsed``: ended more than ``COLLAPSE_DROP`` below where
they started).

The curve is J/J* (``optimality_ratio``, exact) on the bandit and the success rate of the
training episodes (``rollouts/success_rate``; ``reward_mean`` where an algorithm does not
report it) on the embedded env.

    python benchmarks/learning_curves.py --env bandit --set env_config.num_turns=4
    python benchmarks/learning_curves.py --env tool_tasks --algorithms seeupo grpo ppo --budget 370 \
        --set torch_threads=1 --set evaluation.before=false
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
TUNED = ROOT / "tuned_examples"
ENVS = {
    # env -> (tuned-example glob, suffix to strip from the stem, curve metric, default budget)
    "bandit": ("bandit_*.yaml", "", "optimality_ratio", 15360),
    # The same bandit with one MLP for every turn (shared weights, as with one LLM).
    "bandit_shared": ("bandit_shared_*.yaml", "", "optimality_ratio", 7680),
    "tool_tasks": ("tool_tasks_*_smollm2.yaml", "_smollm2", "rollouts/success_rate", 480),
}
FALLBACK_METRIC = "reward_mean"
MAIN = "seeupo"  # drawn first and in every panel


def tuned_examples(env: str) -> dict[str, Path]:
    """``{algorithm label: YAML}`` for ``env``: every single-run example (no search space)."""
    from rllib_seeupo.experiment import load_experiment

    pattern, suffix, _, _ = ENVS[env]
    found = {}
    for path in sorted(TUNED.glob(pattern)):
        if env == "bandit" and path.stem.startswith("bandit_shared_"):
            continue  # the shared-weight bandit is an env of its own here
        label = path.stem.removeprefix(f"{env}_").removesuffix(suffix)
        if not load_experiment(path).has_search_space():
            found[label] = path
    return dict(sorted(found.items(), key=lambda item: (item[0] != MAIN, not item[0].startswith(MAIN), item[0])))


def run_overrides(path: Path, seed: int, extra: list[str]) -> list[str]:
    from rllib_seeupo.experiment import load_experiment

    overrides = [f"seed={seed}"]
    if "seed" in (load_experiment(path).config.get("env_config") or {}):
        overrides.append(f"env_config.seed={seed}")
    return overrides + list(extra)


def split_label(label: str) -> tuple[str, list[str]]:
    """``"seeupo_parallel@num_epochs_per_turn=4"`` -> the tuned example's label and the
    overrides of this variant of it."""
    base, *overrides = label.split("@")
    return base, overrides


def curve_of(records: list[dict[str, float]], metric: str) -> tuple[list[list[float]], str]:
    """``[[env_steps, value], ...]`` per iteration, and the metric actually used."""
    if not any(metric in r for r in records):
        metric = FALLBACK_METRIC
    return [[r["env_steps"], r[metric]] for r in records if metric in r and "env_steps" in r], metric


# The update rule's settings, as the run's config resolves them (defaults included), stored
# with every run: a finished run counts only while today's code resolves them the same way.
UPDATE_RULE = (
    "update_order", "advantage_norm", "advantage_clip", "advantage_clip_mode", "ratio_level", "clip_param",
    "compound_factor", "old_policy", "skip_zero_advantage_updates",
    "num_epochs_per_turn", "minibatch_size", "lr",
)


def update_rule(path: Path, overrides: list[str]) -> dict:
    """``{setting: value}`` of ``UPDATE_RULE`` for this run (those its algorithm has)."""
    from rllib_seeupo.experiment import build_config, load_experiment

    config = build_config(load_experiment(path, overrides))
    return {key: getattr(config, key) for key in UPDATE_RULE if hasattr(config, key)}


def train_run(label: str, path: Path, seed: int, overrides: list[str], args, run_dir: Path) -> dict:
    """Train one tuned example until ``args.budget`` env steps; the run's record."""
    from rllib_seeupo.cli import train_in_process
    from rllib_seeupo.experiment import load_experiment, prepare_warm_start

    experiment = load_experiment(path, overrides)
    prepare_warm_start(experiment)  # cached: the first run of a study fine-tunes, the rest reuse it
    experiment.stop = {"env_steps": args.budget}
    run_dir.mkdir(parents=True, exist_ok=True)
    # The CLI's per-iteration lines go to the run's own log.
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stdout(log):
        run = train_in_process(experiment, run_dir)
    curve, metric = curve_of(run["iterations"], args.metric)
    return {
        "algorithm": label, "run": experiment.run, "env": experiment.env, "seed": seed,
        "config_file": str(path.relative_to(ROOT)), "overrides": overrides, "budget": args.budget,
        "update_rule": update_rule(path, overrides),
        "metric": metric, "curve": curve, "final": run["final"], "wall_time_s": run["wall_time_s"],
        "iterations": run["iterations"],
    }


def untrained_setting(path: Path, overrides: list[str]) -> dict:
    """What the untrained model's held-out figures depend on: env, env_config, model_config,
    the warm-started model (its cache folder, named by a hash of everything it depends on)
    and the evaluation's split, number of tasks and batch size (greedy, k=1)."""
    from rllib_seeupo.experiment import evaluation_settings, load_experiment, warm_start_folder

    experiment = load_experiment(path, overrides)
    settings = evaluation_settings(experiment)
    warm = warm_start_folder(experiment)[0].name if experiment.warm_start else None
    return json.loads(json.dumps({
        "env": experiment.env, "env_config": experiment.config.get("env_config") or {},
        "model_config": experiment.config.get("model_config") or {}, "warm_start": experiment.warm_start,
        "warm_start_model": warm,
        **{key: settings[key] for key in ("split", "num_tasks", "k", "batch_size")},
    }, default=str))


def measure_untrained(path: Path, overrides: list[str], out: Path) -> dict:
    """Held-out figures of the untrained model, measured once per output folder.

    Every run starts from the same weights (LoRA's B is zero) and is evaluated greedily on
    the same first ``num_tasks`` tasks of the split, so one measurement stands for the
    ``before`` of every run (the runs then set ``evaluation.before=false``). Stored as
    ``OUT/<env>/untrained.json`` with the setting it was measured in, and measured again
    when that setting changes."""
    setting = untrained_setting(path, overrides)
    if setting["k"] != 1:
        raise SystemExit("evaluation.before=false needs greedy evaluation (k=1): sampled figures differ by seed")
    target = out / "untrained.json"
    if target.exists():
        record = json.loads(target.read_text())
        if record.get("setting") == setting:
            return record
        print(f"{target}: measured in another setting, measuring again", flush=True)
    import torch

    from rllib_seeupo.evaluation import evaluate, load_module, module_policy, progress_bar
    from rllib_seeupo.experiment import load_experiment, prepare_warm_start
    from rllib_seeupo.llm.module import DEFAULTS
    from rllib_seeupo.turn_env import make_turn_env

    experiment = load_experiment(path, overrides)
    prepare_warm_start(experiment)
    name = experiment.env.removeprefix("seeupo/")
    env_config = dict(setting["env_config"])
    model_config = dict(experiment.config.get("model_config") or {})
    if experiment.torch_threads:
        torch.set_num_threads(int(experiment.torch_threads))
    task_ids = list(make_turn_env(name, env_config).task_ids(setting["split"]))[: setting["num_tasks"]]
    module = load_module(model_config.pop("model", DEFAULTS["model"]), model_config)
    result = evaluate(module_policy(module), name, env_config, task_ids, sample=False,
                      batch_size=setting["batch_size"], progress=progress_bar("   untrained"))
    record = {"config_file": str(path.relative_to(ROOT)), "overrides": overrides, "setting": setting,
              "split": setting["split"], "num_tasks": len(task_ids), **result}
    target.write_text(json.dumps(record, indent=1, default=str))
    return record


def held_out(record: dict) -> dict[str, float]:
    """``{"all": success, "1": level 1's, ...}`` after training, from a run's final result."""
    final = record["final"]
    figures = {"all": final["eval_success_after"]}
    for key, value in final.items():
        match = key.split("/")
        if len(match) == 4 and match[:2] == ["evaluation", "level"] and match[3] == "success_rate":
            figures[match[2]] = value
            figures[f"n{match[2]}"] = final[f"evaluation/level/{match[2]}/num_episodes"]
    return figures


def levels_of(figures: dict[str, float]) -> list[str]:
    return sorted(k for k in figures if k.isdigit())


# The embedded env's multi-decision levels: 5-7 (a later call depends on a tool result)
# where a run trains on them, else the default levels' 3 and 4.
DEPENDENT_LEVELS, DEFAULT_MULTI_LEVELS = ("5", "6", "7"), ("3", "4")


def multi_levels(levels: list[str]) -> tuple[str, ...]:
    """The multi-decision levels among ``levels``: 5-7 where any is there, else 3 and 4."""
    return tuple(l for l in DEPENDENT_LEVELS if l in levels) or DEFAULT_MULTI_LEVELS


def multi_decision(figures: dict[str, float], levels=DEFAULT_MULTI_LEVELS) -> float | None:
    """Success over the episodes of the multi-decision ``levels`` together."""
    if not all(level in figures for level in levels):
        return None
    episodes = sum(figures[f"n{level}"] for level in levels)
    return sum(figures[level] * figures[f"n{level}"] for level in levels) / episodes


def paired_interval(diffs: list[float]) -> tuple[float, float, int] | None:
    """Mean of paired differences, the half-width of its 95% interval (Student's t with n - 1
    degrees of freedom: ``t_0.975 * std / sqrt(n)``, std with ddof 1) and n; None for n < 2."""
    from scipy import stats

    if len(diffs) < 2:
        return None
    mean, std = mean_std(diffs)
    return mean, float(stats.t.ppf(0.975, len(diffs) - 1)) * std / math.sqrt(len(diffs)), len(diffs)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def largest_drift(record: dict) -> tuple[float, float] | None:
    """The run's largest per-turn k3 KL from pi_old (``.../turn_k/kl_old`` or
    ``.../all_turns/kl_old``: the mean over a turn update's minibatches, each measured before
    its step) and largest share of rows outside the clip range (also means over a turn
    update's minibatches), over every iteration. pi_old is the rollout policy under
    ``old_policy: rollout`` and in a parallel update; under ``old_policy: current`` with a
    sequential update it is the weights the turn update started from, which leaves out what
    the later turns' updates moved (and is 0 by construction with one step per turn), so
    such a run gives None, as does an algorithm that reports neither (RLlib's PPO)."""
    rule = record.get("update_rule") or {}
    if rule.get("old_policy") == "current" and rule.get("update_order") != "parallel":
        return None
    kls, clips = [], []
    for iteration in record["iterations"]:
        for key, value in iteration.items():
            parts = key.split("/")
            if len(parts) != 4 or parts[0] != "learners" or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            if parts[3] == "kl_old":
                kls.append(value)
            elif parts[3] == "clip_fraction":
                clips.append(value)
    return (max(kls), max(clips)) if kls and clips else None


# The one definition of a collapse, fixed before the comparison's runs: a run collapsed when
# it ends more than this below where it started (held-out success: the untrained model's; a
# curve: its first point). An exact drop of 0.05 on 200 tasks (10 tasks) is not more.
COLLAPSE_DROP = 0.05


def collapsed(start: float, final: float) -> bool:
    return final < start - COLLAPSE_DROP - 1e-9


def held_out_table(env: str, runs: dict[str, list[dict]], args, out: Path) -> str:
    """Held-out greedy success after training per algorithm: every seed, the paired
    difference against the baseline, per-level figures, collapses (a seed that ends more
    than 5 points below the start: the untrained or warm-started model, ``untrained.json``),
    and the multi-decision levels against the start and the best blind policy."""
    untrained_path = out / "untrained.json"
    untrained = json.loads(untrained_path.read_text()) if untrained_path.exists() else None
    base_figures, blind = None, {}
    start = "warm-started" if untrained and untrained.get("setting", {}).get("warm_start") else "untrained"
    if untrained is not None:
        groups = (untrained.get("groups") or {})
        base_figures = {"all": untrained["success_rate"]}
        for level, figures in groups.items():
            base_figures[level] = figures["success_rate"]
            base_figures[f"n{level}"] = figures["num_episodes"]
    with_eval = {label: [r for r in rs if "eval_success_after" in r["final"]] for label, rs in runs.items()}
    with_eval = {label: rs for label, rs in with_eval.items() if rs}
    if not with_eval:
        return ""
    levels = sorted({level for rs in with_eval.values() for r in rs for level in levels_of(held_out(r))})
    multi = multi_levels(levels)
    name = "+".join(multi)
    baseline = {r["seed"]: held_out(r) for r in with_eval.get(args.baseline, [])}
    lines = [
        f"{env}: held-out greedy success after training "
        f"({untrained['num_tasks'] if untrained else '?'} {untrained['split'] if untrained else ''} tasks, "
        "the same for every run; mean +- std over seeds, per seed in brackets)",
        "",
        _row(["algorithm", "runs", "optimizer steps (mean)", "held-out success", f"- {args.baseline} (paired by seed, 95% CI)", "collapses",
              *(f"level {level}" for level in levels), f"levels {name}", f"{name} - {args.baseline} (paired)",
              "largest KL / clip share per run (mean over seeds) [max]"]),
        _row(["---"] * (9 + len(levels))),
    ]
    if base_figures is not None:
        md = multi_decision(base_figures, multi)
        start = "warm-started" if untrained.get("setting", {}).get("warm_start") else "untrained"
        supervised = (untrained.get("setting", {}).get("warm_start") or {}).get("steps")
        lines.append(_row([start, "1", f"0 (+{supervised} supervised)" if supervised else "0", f"{base_figures['all']:.3f}", "-", "-",
                           *(f"{base_figures[level]:.3f}" if level in base_figures else "-" for level in levels),
                           "-" if md is None else f"{md:.3f}", "-", "-"]))
        blind = {level: figures["blind_success"] for level, figures in groups.items() if "blind_success" in figures}
        if blind:
            blind_figures = {**blind, **{f"n{level}": base_figures[f"n{level}"] for level in blind}}
            md = multi_decision(blind_figures, multi)
            lines.append(_row(["best blind policy (per level)", "-", "-", "-", "-", "-",
                               *(f"{blind[level]:.3f}" if level in blind else "-" for level in levels),
                               "-" if md is None else f"{md:.3f}", "-", "-"]))
    for label, rs in with_eval.items():
        figures = [held_out(r) for r in rs]
        mean, std = mean_std([f["all"] for f in figures])
        per_seed = ", ".join(f"{f['all']:.2f}" for f in figures)
        paired = None if label == args.baseline else paired_interval(
            [f["all"] - baseline[r["seed"]]["all"] for f, r in zip(figures, rs) if r["seed"] in baseline])
        collapses = "-" if base_figures is None else f"{sum(collapsed(base_figures['all'], f['all']) for f in figures)}/{len(rs)}"
        level_cells = []
        for level in levels:
            values = [f[level] for f in figures if level in f]
            level_cells.append(f"{mean_std(values)[0]:.3f}" if values else "-")
        md_values = [multi_decision(f, multi) for f in figures]
        md_cell = "-" if None in md_values else f"{mean_std(md_values)[0]:.3f} +- {mean_std(md_values)[1]:.3f}"
        base_md = {seed: multi_decision(f, multi) for seed, f in baseline.items()}
        md_paired = None if label == args.baseline or None in md_values else paired_interval([
            m - base_md[r["seed"]] for m, r in zip(md_values, rs) if base_md.get(r["seed"]) is not None
        ])
        steps = [r["final"]["optimizer_steps"] for r in rs if "optimizer_steps" in r["final"]]
        lines.append(_row([
            label, str(len(rs)), f"{sum(steps) / len(steps):.0f}" if len(steps) == len(rs) else "-",
            f"{mean:.3f} +- {std:.3f} [{per_seed}]",
            "-" if paired is None else f"{paired[0]:+.3f} +- {paired[1]:.3f} (n={paired[2]})", collapses,
            *level_cells, md_cell, "-" if md_paired is None else f"{md_paired[0]:+.3f} +- {md_paired[1]:.3f}",
            drift_cell([largest_drift(r) for r in rs]),
        ]))
    start_md = None if base_figures is None else multi_decision(base_figures, multi)
    blind_md = None if base_figures is None or not blind else multi_decision(blind_figures, multi)
    if start_md is not None:
        lines += ["", f"levels {name} after training minus the start (the {start} model) and minus the best blind "
                      "policy, per algorithm (95% Student-t over its seeds; the baselines are fixed figures):", "",
                  _row(["algorithm", "seeds", f"{name} - start", f"{name} - best blind"]), _row(["---"] * 4)]
        for label, rs in with_eval.items():
            values = [multi_decision(held_out(r), multi) for r in rs]
            if None in values:
                continue
            cells = []
            for reference in (start_md, blind_md):
                interval = None if reference is None else paired_interval([v - reference for v in values])
                cells.append("-" if interval is None else f"{interval[0]:+.3f} +- {interval[1]:.3f}")
            lines.append(_row([label, str(len(rs)), *cells]))
    lines += ["", "std: the sample std over seeds (ddof 1); intervals: 95% Student-t over the paired seeds. "
              "collapses: seeds whose held-out success ended more than 0.05 below the start's (the untrained "
              "or warm-started model that every run begins from).",
              "largest KL / clip share: per run, the largest k3 KL from the rollout policy and the largest share "
              "of rows (responses) whose sequence-level ratio left the clip range, each a turn update's mean over its minibatches, "
              "in any turn update of any iteration; '-' where the run measures neither against the rollout "
              "policy (old_policy current with a sequential update, RLlib's PPO)."]
    return "\n".join(lines) + "\n"


def summarise(curve: list[list[float]], budget: int) -> dict[str, float]:
    """Final value, area under the curve (its mean over env steps, trapezoidal, from the
    first iteration up to the budget) and whether the run collapsed (``collapsed`` from its
    first point)."""
    xs = [min(x, budget) for x, _ in curve]
    ys = [y for _, y in curve]
    if len(xs) > 1 and xs[-1] > xs[0]:
        area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)) / (xs[-1] - xs[0])
    else:
        area = ys[-1]
    return {"final": ys[-1], "auc": area, "best": max(ys), "collapsed": collapsed(ys[0], ys[-1])}


def drift_cell(drifts: list[tuple[float, float] | None]) -> str:
    if None in drifts:
        return "-"
    kls, clips = [d[0] for d in drifts], [d[1] for d in drifts]
    return f"{mean_std(kls)[0]:.2f} [{max(kls):.2f}] / {mean_std(clips)[0]:.2f} [{max(clips):.2f}]"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; nan for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_difference(runs: list[dict], baseline: list[dict], budget: int) -> tuple[float, float, int] | None:
    """Mean over the seeds both have of (final - baseline's final), the half-width of its 95%
    interval (Student's t) and the number of pairs; None with fewer than two pairs."""
    base = {r["seed"]: summarise(r["curve"], budget)["final"] for r in baseline}
    return paired_interval([summarise(r["curve"], budget)["final"] - base[r["seed"]] for r in runs if r["seed"] in base])


def write_table(env: str, runs: dict[str, list[dict]], args, out: Path) -> str:
    metric = {r["metric"] for rs in runs.values() for r in rs}
    held_out = any("eval_success_after" in r["final"] for rs in runs.values() for r in rs)
    lines = [
        f"{env}: {', '.join(sorted(metric))} at a budget of {args.budget} env steps, seeds {args.seeds} "
        "(mean +- std over seeds; per seed in brackets)",
        "",
        f"| algorithm | runs | final | final - {args.baseline} (paired, 95% CI) | area under curve | collapses | best | wall s / run |"
        + (" held-out success before -> after |" if held_out else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if held_out else ""),
    ]
    for label, rs in runs.items():
        stats = [summarise(r["curve"], args.budget) for r in rs]
        final, auc, best = (mean_std([s[k] for s in stats]) for k in ("final", "auc", "best"))
        wall = sum(r["wall_time_s"] for r in rs) / len(rs)
        per_seed = ", ".join(f"{st['final']:.2f}" for st in stats)
        paired = paired_difference(rs, runs.get(args.baseline, []), args.budget) if label != args.baseline else None
        diff = "-" if paired is None else f"{paired[0]:+.3f} +- {paired[1]:.3f} (n={paired[2]})"
        row = (
            f"| {label} | {len(rs)} | {final[0]:.3f} +- {final[1]:.3f} [{per_seed}] | {diff} | "
            f"{auc[0]:.3f} +- {auc[1]:.3f} | "
            f"{sum(s['collapsed'] for s in stats)}/{len(rs)} | {best[0]:.3f} | {wall:.0f} |"
        )
        if held_out:
            before = [r["final"].get("eval_success_before") for r in rs]
            after = [r["final"].get("eval_success_after") for r in rs]
            if None in after:
                row += " - |"
            else:
                # `evaluation.before=false` runs skip the first measurement (the same base
                # model in every run): the column then shows the after figures alone.
                (a, a_std) = mean_std(after)
                b = "-" if None in before else f"{mean_std(before)[0]:.3f}"
                row += f" {b} -> {a:.3f} +- {a_std:.3f} [{', '.join(f'{x:.2f}' for x in after)}] |"
        lines.append(row)
    lines += [
        "",
        "final: the value at the last iteration (the first to reach the budget); area under curve: the "
        "curve's mean over env steps; std: the sample std over seeds (ddof 1); collapses: runs that ended more "
        "than 0.05 below their first iteration's value; "
        "best: the best value of each run, averaged.",
    ]
    table = "\n".join(lines) + "\n"
    if held_out:
        table += "\n" + held_out_table(env, runs, args, out)
    (out / "table.md").write_text(table)
    return table


def legend_label(label: str, width: int = 48) -> str:
    """``label`` broken at its ``@`` overrides into lines of about ``width`` characters, so
    that a long variant's legend entry does not squeeze the axes."""
    lines = [""]
    for i, part in enumerate(label.split("@")):
        piece = part if i == 0 else "@" + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("  " + piece)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def plot(env: str, runs: dict[str, list[dict]], args, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ablations = [label for label in runs if label.startswith(MAIN)]
    others = [label for label in runs if not label.startswith(MAIN)]
    panels = [("SeeUPO and its ablations", ablations)]
    if others:
        panels.append(("SeeUPO and the baselines", [MAIN] * (MAIN in runs) + others))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6.0), squeeze=False, sharey=True)
    metric = ", ".join(sorted({r["metric"] for rs in runs.values() for r in rs}))
    for ax, (title, labels) in zip(axes[0], panels):
        colours = (f"C{i}" for i in itertools.count())
        for label in labels:
            curves = [np.asarray(r["curve"], dtype=float) for r in runs[label]]
            start = max(c[0, 0] for c in curves)
            grid = np.linspace(start, max(args.budget, start), 100)
            ys = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
            colour = "black" if label == MAIN else next(colours)
            style = "-" if label == MAIN or int(colour[1:]) < 10 else "--"
            ax.plot(grid, ys.mean(0), style, color=colour, label=f"{legend_label(label)} ({len(curves)})",
                    linewidth=2.2 if label == MAIN else 1.3)
            ax.fill_between(grid, ys.min(0), ys.max(0), color=colour, alpha=0.08)
        ax.set_title(title)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    axes[0][0].set_ylabel(metric)
    fig.suptitle(f"{env}: mean over seeds {args.seeds} (line) and their range (band), "
                 f"{args.budget} env steps per run", fontsize=10)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(ENVS), default="bandit")
    parser.add_argument("--algorithms", nargs="+", default=None, help="labels of tuned examples (default: all of the "
                        "env); LABEL@KEY=VALUE[@KEY=VALUE] is a variant of one with its own overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", default=MAIN, help="label the paired differences are taken against")
    parser.add_argument("--budget", type=int, default=None, help="env steps per run (default: bandit 15360, tool_tasks 480)")
    parser.add_argument("--metric", default=None, help="the curve's metric (default: the env's)")
    parser.add_argument("--model", default=None, help="LLM envs: model_config.model for every run ('tiny': a random "
                        "tiny model built locally, for a quick check of the pipeline)")
    parser.add_argument("--set", action="append", default=[], help="override for every run, as in the CLI")
    parser.add_argument("--out", default="results/learning_curves")
    parser.add_argument("--list", action="store_true", help="print the algorithms found and exit")
    parser.add_argument("--report-only", action="store_true", help="run nothing: plot and tabulate the finished runs")
    args = parser.parse_args()
    _, _, default_metric, default_budget = ENVS[args.env]
    args.budget = args.budget or default_budget
    args.metric = args.metric or default_metric

    examples = tuned_examples(args.env)
    if args.list:
        for label, path in examples.items():
            print(f"{label:24s} {path.relative_to(ROOT)}")
        return
    labels = args.algorithms or list(examples)
    unknown = [label for label in labels if split_label(label)[0] not in examples]
    if unknown:
        parser.error(f"no tuned example for {unknown} on {args.env}; found {list(examples)}")
    if args.model:
        model = args.model
        if model == "tiny":
            import tempfile

            from rllib_seeupo.llm.tiny import build_tiny_model

            model = build_tiny_model(Path(tempfile.gettempdir()) / "rllib_seeupo_tiny_model")
        args.set = [f"model_config.model={model}", *args.set]

    out = Path(args.out) / args.env
    out.mkdir(parents=True, exist_ok=True)
    if ENVS[args.env][2] != "optimality_ratio" and not args.report_only:
        # LLM envs: one measurement of the untrained model serves every run that skips its own
        # (`evaluation.before=false`).
        from rllib_seeupo.experiment import evaluation_settings, load_experiment

        resolved = [(examples[base], run_overrides(examples[base], args.seeds[0], args.set + variant))
                    for base, variant in map(split_label, labels)]
        experiment = load_experiment(*resolved[0])
        if experiment.evaluation and not evaluation_settings(experiment)["before"]:
            settings = {json.dumps(untrained_setting(*r), sort_keys=True) for r in resolved}
            if len(settings) > 1:
                parser.error("the algorithms differ in env, model or evaluation settings: one untrained "
                             "measurement cannot stand for all of them; run them with separate --out folders")
            untrained = measure_untrained(*resolved[0], out)
            print(f"untrained: held-out success {untrained['success_rate']:.3f} on {untrained['num_tasks']} tasks", flush=True)
    runs: dict[str, list[dict]] = {}
    start = time.time()
    for label in labels:
        for seed in args.seeds:
            path = out / f"{label}_seed{seed}.json"
            base, variant = split_label(label)
            expected = run_overrides(examples[base], seed, args.set + variant)
            if path.exists():  # resumable: a finished run with the same settings is kept
                record = json.loads(path.read_text())
                same_rule = record.get("update_rule") == update_rule(examples[base], expected)
                if record.get("budget") == args.budget and record.get("overrides") == expected and same_rule:
                    runs.setdefault(label, []).append(record)
                    continue
                print(f"{path.name}: other settings than this run's"
                      + ("" if same_rule else " (the update rule's defaults changed)")
                      + ("" if args.report_only else ", running it again"),
                      flush=True)
            if args.report_only:
                continue
            record = train_run(label, examples[base], seed, expected, args, out / "runs" / f"{label}_seed{seed}")
            path.write_text(json.dumps(record, indent=1))
            runs.setdefault(label, []).append(record)
            last = record["curve"][-1]
            print(f"{label} seed {seed}: {record['metric']} {last[1]:.3f} at {last[0]:.0f} env steps "
                  f"({record['wall_time_s']:.0f} s; {time.time() - start:.0f} s in all)", flush=True)
    if not runs:
        raise SystemExit(f"no finished runs under {out}")
    print(f"plot: {plot(args.env, runs, args, out)}")
    print(write_table(args.env, runs, args, out), end="")


if __name__ == "__main__":
    main()
