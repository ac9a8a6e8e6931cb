"""Per-iteration records, progress lines, ``summary.json`` and the learning-curve plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.rllib.utils.metrics import ALL_MODULES

from rllib_seeupo.evaluation import EVALUATION_BEFORE, MEASURED_AT, figures_from_metrics


def _scalar(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _flatten(prefix: str, node: Any, out: dict[str, float]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), value, out)
    else:
        value = _scalar(node)
        if value is not None:
            out[prefix] = value


def iteration_record(result: dict[str, Any]) -> dict[str, float]:
    """The figures of one training result worth keeping, flat (``a/b/c`` keys)."""
    runners = result.get("env_runners", {})
    record: dict[str, float] = {"iteration": float(result.get("training_iteration", 0))}
    for key, source in (
        ("env_steps", runners.get("num_env_steps_sampled_lifetime")),
        ("episode_return_mean", runners.get("episode_return_mean")),
        ("time_this_iter_s", result.get("time_this_iter_s")),
        ("time_total_s", result.get("time_total_s")),
        ("optimality_ratio", result.get("optimality_ratio")),
        ("optimizer_steps", result.get("optimizer_steps")),
    ):
        value = _scalar(source)
        if value is not None:
            record[key] = value
    rollouts = result.get("rollouts", {})
    reward = _scalar(rollouts.get("reward_mean"))
    if reward is None:
        # Algorithms without our grouping (RLlib's PPO): every turn gets the episode's reward.
        per_agent = [v for v in (runners.get("agent_episode_returns_mean") or {}).values() if _scalar(v) is not None]
        reward = float(sum(per_agent) / len(per_agent)) if per_agent else None
    if reward is not None:
        record["reward_mean"] = reward
    _flatten("rollouts", {k: v for k, v in rollouts.items() if k != "reward_mean"}, record)
    success = _scalar(runners.get("success_rate"))
    if "rollouts/success_rate" not in record and success is not None:
        record["rollouts/success_rate"] = success  # RLlib's PPO: `callbacks.log_episode_success`
    measured = measured_evaluation(result)
    if measured is not None:
        _flatten("evaluation", {k: v for k, v in measured.items() if k not in ("env_runners", MEASURED_AT)}, record)
    for module_id, stats in (result.get("learners") or {}).items():
        if module_id == ALL_MODULES or not isinstance(stats, dict):
            continue
        _flatten(f"learners/{module_id}", {k: v for k, v in stats.items() if "throughput" not in k}, record)
    return record


def measured_evaluation(result: dict[str, Any]) -> dict[str, Any] | None:
    """The held-out figures (``evaluation/``, see ``rllib_seeupo.evaluation``) of a training
    result when they were measured in that iteration; None when the result has none or
    repeats an earlier iteration's (RLlib reports them once more in the next result)."""
    evaluation = result.get("evaluation")
    if not isinstance(evaluation, dict) or _scalar(evaluation.get("success_rate")) is None:
        return None
    at = _scalar(evaluation.get(MEASURED_AT))
    steps = _scalar((result.get("env_runners") or {}).get("num_env_steps_sampled_lifetime"))
    if at is None or (steps is not None and at != steps):
        return None
    return evaluation


def _lookup(result: dict[str, Any], key: str) -> float | None:
    node: Any = result
    for part in key.split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return _scalar(node)


class RunRecorder:
    """The summary of one run (a Tune trial or an in-process run) built from its training
    results, the same way in both modes: per-iteration records, the held-out evaluations
    before (``evaluation_before/`` of the first result) and after training (the last one
    measured), and the last value of the experiment's ``metric`` where a result has it."""

    def __init__(self, metric: str | None = None):
        self.metric = metric
        self.records: list[dict[str, float]] = []
        self.evaluation: dict[str, dict[str, Any]] = {}
        self.metric_value: float | None = None

    def add(self, result: dict[str, Any]) -> dict[str, float]:
        """Records one training result; returns its record."""
        record = iteration_record(result)
        self.records.append(record)
        before = result.get(EVALUATION_BEFORE)
        if "before" not in self.evaluation and isinstance(before, dict) and _scalar(before.get("success_rate")) is not None:
            self.evaluation["before"] = self._figures(before, iteration=0)
        measured = measured_evaluation(result)
        if measured is not None:
            self.evaluation["after"] = self._figures(measured, iteration=record["iteration"])
        if self.metric:
            # Held-out figures count only where measured (a result may repeat older ones).
            value = record.get(self.metric)
            if value is None and not self.metric.startswith("evaluation/"):
                value = _lookup(result, self.metric)
            if value is None and self.metric == "rollouts/reward_mean":
                value = record.get("reward_mean")  # RLlib's PPO: its per-turn return
            if value is not None:
                self.metric_value = value
        return record

    def add_evaluation(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The figures of an ``algo.evaluate()`` after the last iteration (whose result had
        none): they become the last record's and the "after" evaluation."""
        record = self.records[-1] if self.records else {"iteration": 0.0}
        _flatten("evaluation", {k: v for k, v in metrics.items() if k not in ("env_runners", MEASURED_AT)}, record)
        self.evaluation["after"] = self._figures(metrics, iteration=record["iteration"])
        if self.metric and self.metric in record:
            self.metric_value = record[self.metric]
        return record

    @staticmethod
    def _figures(metrics: dict[str, Any], iteration: float) -> dict[str, Any]:
        figures = figures_from_metrics(metrics)
        env_steps = figures.pop(MEASURED_AT, None)
        figures["iteration"] = int(iteration)
        if env_steps is not None:
            figures["env_steps"] = int(env_steps)
        return figures

    def final(self) -> dict[str, float]:
        final = dict(self.records[-1]) if self.records else {}
        for key in ("optimality_ratio", "reward_mean"):
            values = [r[key] for r in self.records if key in r]
            if values:
                final[f"best_{key}"] = max(values)
        for when, figures in self.evaluation.items():
            final[f"eval_success_{when}"] = figures["success_rate"]
        return final

    def summary(self) -> dict[str, Any]:
        return {"iterations": self.records, "final": self.final(), "evaluation": self.evaluation}


def progress_line(record: dict[str, float]) -> str:
    parts = [f"iter {int(record['iteration']):4d}"]
    for key, label, fmt in (
        ("reward_mean", "reward", "{:.3f}"),
        ("optimality_ratio", "J/J*", "{:.3f}"),
        ("rollouts/success_rate", "success", "{:.3f}"),
        ("rollouts/turns_mean", "turns", "{:.2f}"),
        ("rollouts/tokens_per_s", "tok/s", "{:.0f}"),
        ("evaluation/success_rate", "held-out", "{:.3f}"),
        ("env_steps", "steps", "{:.0f}"),
        ("time_this_iter_s", "s", "{:.2f}"),
    ):
        if key in record:
            parts.append(f"{label} {fmt.format(record[key])}")
    return " | ".join(parts)


def should_stop(record: dict[str, float], result: dict[str, Any], stop: dict[str, Any]) -> bool:
    """Tune's semantics: stop once any ``key`` reaches its value (``a/b`` nests)."""
    for key, threshold in stop.items():
        value = record.get(key)
        if value is None:
            node: Any = result
            for part in key.split("/"):
                node = node.get(part) if isinstance(node, dict) else None
            value = _scalar(node)
        if value is not None and value >= threshold:
            return True
    return False


class BudgetStop:
    """Tune's ``stop`` as a callable with ``should_stop``'s rule, so that a Tune trial stops
    where an in-process run does (on the record's keys such as ``env_steps`` too)."""

    def __init__(self, stop: dict[str, Any]):
        self.stop = dict(stop)
        self._checked = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        record = iteration_record(result)
        if not self._checked:  # as the in-process run notes it (Tune's own check needs a dict)
            self._checked = True
            missing = missing_stop_keys(record, result, self.stop)
            if missing:
                import sys

                print(f"note: stop key(s) {missing} are not in the training results", file=sys.stderr, flush=True)
        return should_stop(record, result, self.stop)


def missing_stop_keys(record: dict[str, float], result: dict[str, Any], stop: dict[str, Any]) -> list[str]:
    """The ``stop`` keys that name no number in this result (``should_stop`` never fires on them)."""
    missing = []
    for key in stop:
        node: Any = result
        for part in key.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if key not in record and _scalar(node) is None:
            missing.append(key)
    return missing


def read_summary(path: str | Path) -> dict[str, Any]:
    """A ``summary.json`` written by ``train``; a missing file, a file that is not JSON or
    JSON of another shape is a ValueError naming the file and what is expected."""
    from rllib_seeupo.experiment import ConfigError, read_text_file

    path = Path(path)
    text = read_text_file(path, "summary.json file")
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    expected = "a summary.json of `train`: an object with 'algorithm', 'env' and a list 'iterations'"
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: is a JSON {type(summary).__name__}, expected {expected}")
    missing = [key for key in ("algorithm", "env", "iterations") if key not in summary]
    if missing:
        raise ConfigError(f"{path}: no {', '.join(repr(k) for k in missing)}; expected {expected}")
    if not isinstance(summary["iterations"], list):
        raise ConfigError(f"{path}: 'iterations' is not a list; expected {expected}")
    for i, record in enumerate(summary["iterations"]):
        bad = [k for k, v in record.items() if _scalar(v) is None] if isinstance(record, dict) else None
        if bad is None or bad:
            what = "is not an object" if bad is None else f"has non-numeric {bad[0]!r}"
            raise ConfigError(f"{path}: iterations[{i}] {what}; each record maps metric names to numbers")
    evaluation = summary.get("evaluation")
    if evaluation is not None and not (
        isinstance(evaluation, dict)
        and all(isinstance(v, dict) and _scalar(v.get("success_rate")) is not None for v in evaluation.values())
    ):
        raise ConfigError(f"{path}: 'evaluation' must map 'before'/'after' to results with a 'success_rate'")
    return summary


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=False))
    return path


def plot_learning_curve(
    records: list[dict[str, float]], path: Path, title: str, evaluation: dict[str, dict] | None = None
) -> Path:
    """One panel per headline metric over env steps. Held-out success is drawn where it was
    measured (``evaluation/success_rate`` of the records, and ``evaluation["before"]`` at the
    start) on the success panel, or on a panel of its own; where the env reports groups
    (levels, categories), a last panel draws held-out success per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held_out_key = "evaluation/success_rate"
    panels = [k for k in ("reward_mean", "optimality_ratio", "rollouts/success_rate") if any(k in r for r in records)]
    if "reward_mean" in panels and "rollouts/success_rate" in panels and all(
        r["reward_mean"] == r.get("rollouts/success_rate") for r in records if "reward_mean" in r
    ):
        panels.remove("reward_mean")  # the env's reward is its success: one curve, one panel
    panels = panels or ["episode_return_mean"]
    x_key = "env_steps" if records and all("env_steps" in r for r in records) else "iteration"
    held_out = _held_out_points(records, evaluation or {}, x_key, held_out_key)
    if held_out and "rollouts/success_rate" not in panels:
        panels.append(held_out_key)
    group_by, groups = _held_out_group_points(records, evaluation or {}, x_key)
    if groups:
        panels.append(GROUPS_PANEL)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == GROUPS_PANEL:
            for name, points in groups.items():
                xs, ys = zip(*points)
                ax.plot(xs, ys, "o-", label=f"{group_by} {name}")
            ax.legend(loc="best", fontsize=8)
            key = f"held-out success per {group_by}"
        elif key != held_out_key:
            points = [(r[x_key], r[key]) for r in records if key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="." if len(points) < 50 else None, label="training rollouts")
        if key in ("rollouts/success_rate", held_out_key) and held_out:
            k = max([int(f.get("k", 1)) for f in (evaluation or {}).values() if isinstance(f, dict)] or [1])
            xs, ys = zip(*held_out)
            ax.plot(xs, ys, "s-", color="C3", label=f"held-out avg@{k}" if k > 1 else "held-out (greedy)")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("env steps" if x_key == "env_steps" else "iteration")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


GROUPS_PANEL = "held-out per group"


def _held_out_group_points(records, evaluation: dict[str, dict], x_key: str) -> tuple[str, dict[str, list]]:
    """``(group_by, {group: [(x, held-out success)]})`` where it was measured: the records'
    ``evaluation/<group_by>/<group>/success_rate`` and the summary's before/after groups."""
    import re

    pattern = re.compile(r"evaluation/(category|level)/(.+)/success_rate")
    points: dict[str, dict[float, float]] = {}
    group_by = ""
    for r in records:
        for key, value in r.items():
            match = pattern.fullmatch(key)
            if match and x_key in r:
                group_by = match.group(1)
                points.setdefault(match.group(2), {})[r[x_key]] = value
    for figures in evaluation.values():
        if isinstance(figures, dict) and figures.get("groups") and _scalar(figures.get(x_key)) is not None:
            group_by = group_by or figures.get("group_by", "group")
            for name, group in figures["groups"].items():
                if _scalar(group.get("success_rate")) is not None:
                    points.setdefault(str(name), {}).setdefault(figures[x_key], group["success_rate"])
    order = sorted(points, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))
    return group_by, {name: sorted(points[name].items()) for name in order}


def _held_out_points(records, evaluation: dict[str, dict], x_key: str, key: str) -> list[tuple[float, float]]:
    """(x, held-out success) where it was measured: the records' ``key``, and the summary's
    before/after figures (older summaries: at the first and last iteration)."""
    points = {r[x_key]: r[key] for r in records if key in r and x_key in r}
    xs = [r[x_key] for r in records if x_key in r]
    for when, figures in evaluation.items():
        if not isinstance(figures, dict) or _scalar(figures.get("success_rate")) is None:
            continue
        x = _scalar(figures.get(x_key))
        if x is None and xs and when in ("before", "after"):
            x = min(xs) if when == "before" else max(xs)
        if x is not None:
            points.setdefault(x, figures["success_rate"])
    return sorted(points.items())
