"""The statistics of benchmarks/learning_curves.py say what they are: the sample std, a
paired 95% Student-t interval, one definition of collapse."""

import importlib.util
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("learning_curves", ROOT / "benchmarks" / "learning_curves.py")
learning_curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning_curves)


def test_std_is_the_sample_std():
    values = [0.575, 0.645, 0.685, 0.535, 0.365]
    mean, std = learning_curves.mean_std(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert std == pytest.approx(statistics.stdev(values))  # ddof 1
    assert std > statistics.pstdev(values)
    assert math.isnan(learning_curves.mean_std([0.5])[1])


def test_paired_interval_is_students_t():
    diffs = [0.025, 0.28, 0.155, 0.03, -0.155]
    mean, half, n = learning_curves.paired_interval(diffs)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=statistics.mean(diffs), scale=stats.sem(diffs))
    assert n == 5 and mean == pytest.approx(statistics.mean(diffs))
    assert (mean - half, mean + half) == pytest.approx((low, high))
    # With these five seeds the interval includes zero: the difference is not established.
    assert mean - half < 0 < mean + half
    assert learning_curves.paired_interval([0.1]) is None


def test_one_definition_of_collapse():
    assert learning_curves.collapsed(0.395, 0.340)
    assert not learning_curves.collapsed(0.395, 0.345)  # exactly 0.05 below is not more
    assert not learning_curves.collapsed(0.395, 0.6)
    # A curve is judged from its first point, as held-out success from the untrained model's.
    assert learning_curves.summarise([[10, 0.5], [20, 0.9], [30, 0.44]], 30)["collapsed"]
    assert not learning_curves.summarise([[10, 0.5], [20, 0.9], [30, 0.46]], 30)["collapsed"]


def test_the_untrained_measurement_is_keyed_on_the_warm_started_model(monkeypatch):
    """``untrained.json`` stands for every run's start only while the warm-started model is
    the same: anything its cache folder's hash covers (here the warm start's version)
    makes it measured again."""
    from rllib_seeupo import experiment

    example = ROOT / "tuned_examples" / "tool_tasks_dependent_seeupo_smollm2.yaml"
    before = learning_curves.untrained_setting(example, [])
    assert before["warm_start_model"] and before == learning_curves.untrained_setting(example, [])
    monkeypatch.setattr(experiment, "WARM_START_VERSION", experiment.WARM_START_VERSION + 1)
    assert learning_curves.untrained_setting(example, [])["warm_start_model"] != before["warm_start_model"]
    assert learning_curves.untrained_setting(ROOT / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml", [])[
        "warm_start_model"] is None
