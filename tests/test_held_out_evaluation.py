"""Held-out evaluation inside the Algorithm (RLlib's evaluation config): the figures in the
training results, ``algo.evaluate()``, Tune sweeps ranked by them, the same summary in both
CLI modes, and TensorBoard event files in both."""

import json
from pathlib import Path

import pytest

from rllib_seeupo.cli import main
from rllib_seeupo.evaluation import EVALUATION_BEFORE, HeldOutEvaluation, figures_from_metrics, result_metrics
from rllib_seeupo.experiment import build_config, load_experiment

ROOT = Path(__file__).resolve().parents[1]
# The base of the main job (tool_tasks_dependent_seeupo_smollm2.yaml) and of every tool_tasks example.
MAIN_JOB = ROOT / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml"
PPO_JOB = ROOT / "tuned_examples" / "tool_tasks_ppo_smollm2.yaml"
SWEEP = ROOT / "tuned_examples" / "tool_tasks_seeupo_lr_sweep_smollm2.yaml"


def train(args) -> int:
    return main([str(a) for a in args])


def tiny_overrides(model) -> list[str]:
    return [
        f"model_config.model={model}", "model_config.lora.rank=2", "model_config.max_new_tokens=8",
        "evaluation.num_tasks=3", "evaluation.batch_size=3", "num_envs_per_env_runner=4",
    ]


# A text policy that solves most held-out tasks greedily (choice 0: the env's oracle) or
# none (choice 1): the trials of a sweep over its initial logits differ in held-out success.
# Tune's trial processes import it from the repository root (Ray's workers get the driver's
# working directory on their path).
SCRIPTED = [
    "module_class=tests.scripted_module.ScriptedChoiceRLModule",
    "lr=0.0003",
    "group_size=2", "tasks_per_iteration=2", "num_envs_per_env_runner=4",
    "evaluation.num_tasks=20", "evaluation.batch_size=20", "evaluation.interval=1",
]


def scripted_model_config(init_logits: str) -> str:
    return f"model_config={{script: tests.scripted_module.tool_tasks_oracle, init_logits: {init_logits}}}"


def test_yaml_evaluation_maps_onto_rllibs_evaluation_config():
    config = build_config(load_experiment(MAIN_JOB, ["stop.training_iteration=6", "evaluation.k=2"]))
    evaluation = config.custom_evaluation_function
    assert isinstance(evaluation, HeldOutEvaluation)
    assert (evaluation.split, evaluation.k, evaluation.batch_size, evaluation.before) == ("test", 2, 100, True)
    # Evaluated at the last iteration by default, on the first 200 test tasks; RLlib builds
    # no evaluation env runners (another copy of the model).
    assert config.evaluation_interval == 6 and config.evaluation_duration == 200
    assert config.get_evaluation_config_object().evaluation_interval is None
    assert build_config(load_experiment(MAIN_JOB, ["evaluation.interval=2"])).evaluation_interval == 2
    # The same wiring for RLlib's PPO, and the sweep ranks its trials on held-out success.
    assert isinstance(build_config(load_experiment(PPO_JOB)).custom_evaluation_function, HeldOutEvaluation)
    assert load_experiment(SWEEP).metric == "evaluation/success_rate"
    # A sweep chooses on validation; the test split is kept for the report of the choice.
    assert load_experiment(SWEEP).evaluation["split"] == "validation"
    assert load_experiment(MAIN_JOB).metric == "evaluation/success_rate"  # the default with `evaluation:`


def test_a_metric_without_an_evaluation_section_fails_on_load(tmp_path):
    bandit = (ROOT / "tuned_examples" / "bandit_seeupo.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(bandit.replace("  checkpoint_freq: 0\n", "  checkpoint_freq: 0\n  metric: evaluation/success_rate\n"))
    with pytest.raises(ValueError, match="no 'evaluation' section"):
        load_experiment(bad)


def test_the_main_example_runs_as_a_tune_trial_with_held_out_figures_at_its_budget(ray_session, tiny_model, tmp_path):
    """The main job's base file, unchanged but for the tiny model, in the CLI's default (Tune)
    mode: the trial stops on its env-step budget and measures the held-out tasks before
    training and in its last result, as the in-process run does."""
    out = tmp_path / "tune"
    overrides = [*tiny_overrides(tiny_model), "group_size=2", "tasks_per_iteration=2", "stop={env_steps: 1}"]
    assert train(["train", MAIN_JOB, "--output-dir", out, *[a for s in overrides for a in ("--set", s)]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["iterations"]) == 1 and summary["best_trial"] is not None
    last = summary["iterations"][-1]
    assert summary["evaluation"]["before"]["num_episodes"] == 3
    assert last["evaluation/num_episodes"] == 3
    assert summary["evaluation"]["after"]["env_steps"] == last["env_steps"]  # measured in the last result
    assert summary["final"]["eval_success_after"] == last["evaluation/success_rate"]
    assert "evaluation/level/1/success_rate" in last or "evaluation/level/2/success_rate" in last


def test_result_metrics_round_trip_keeps_the_groups():
    figures = {"success_rate": 0.5, "k": 2, "num_episodes": 4, "group_by": "level",
               "groups": {"10": {"success_rate": 1.0, "k": 2}, "2": {"success_rate": 0.0, "k": 2}}}
    metrics = result_metrics(figures)
    assert metrics["level"]["2"]["success_rate"] == 0.0 and "group_by" not in metrics
    back = figures_from_metrics(metrics)
    assert back["group_by"] == "level" and list(back["groups"]) == ["2", "10"] and back["k"] == 2


def test_algo_evaluate_and_train_results_carry_the_held_out_figures(ray_session, tiny_model):
    """SeeUPO and RLlib's PPO: the figures before training (first result), in every evaluated
    iteration and from ``algo.evaluate()``, on the same tasks each time."""
    extra = {MAIN_JOB: ["group_size=2", "tasks_per_iteration=2"],
             PPO_JOB: ["train_batch_size_per_learner=8", "minibatch_size=4"]}
    for path in (MAIN_JOB, PPO_JOB):
        experiment = load_experiment(path, [*tiny_overrides(tiny_model), "evaluation.interval=1", *extra[path]])
        algo = build_config(experiment).build_algo()
        try:
            result = algo.train()
            evaluated = algo.evaluate()
            again = algo.evaluate()
        finally:
            algo.stop()
        held_out = result["evaluation"]
        assert held_out["num_episodes"] == 3 and held_out["num_tasks"] == 3, path.name
        assert held_out["at_env_steps"] == result["env_runners"]["num_env_steps_sampled_lifetime"], path.name
        for key in ("success_rate", "pass_at_k", "parse_error_rate", "truncation_rate", "turns_mean"):
            assert 0.0 <= held_out[key] <= (3 if key == "turns_mean" else 1), (path.name, key)
        assert sum(g["num_episodes"] for g in held_out["level"].values()) == 3, path.name
        assert result[EVALUATION_BEFORE]["num_episodes"] == 3 and result[EVALUATION_BEFORE]["at_env_steps"] == 0
        # Greedy play of the same tasks with the same weights gives the same figures.
        for key in ("success_rate", "turns_mean", "parse_error_rate", "num_episodes"):
            assert evaluated[key] == held_out[key] == again[key], (path.name, key)


def test_tune_sweep_picks_the_trial_with_the_best_held_out_success(ray_session, tmp_path):
    """The sweep example with a scripted policy whose two trials differ in held-out success:
    `metric: evaluation/success_rate` chooses the better one. A --no-tune run of that trial's
    settings writes a summary with the same keys and the same held-out figures, and both
    runs write TensorBoard event files."""
    tune_dir = tmp_path / "tune"
    assert train(["train", SWEEP, "--stop-iters", "1", "--output-dir", tune_dir,
                 *[a for s in SCRIPTED for a in ("--set", s)],
                 "--set", scripted_model_config("{grid_search: [[0.0, 1.0], [1.0, 0.0]]}")]) == 0
    sweep = json.loads((tune_dir / "summary.json").read_text())
    assert len(sweep["trials"]) == 2 and sweep["metric"] == "evaluation/success_rate"
    by_id = {t["trial_id"]: t for t in sweep["trials"]}
    after = {t["trial_id"]: t["final"]["eval_success_after"] for t in sweep["trials"]}
    assert min(after.values()) == 0.0 and max(after.values()) > 0.5
    assert sweep["best_trial"] == max(after, key=after.get)
    assert by_id[sweep["best_trial"]]["config"]["model_config"]["init_logits"] == [1.0, 0.0]
    assert sweep["iterations"][0]["evaluation/success_rate"] == sweep["final"]["eval_success_after"]
    assert "evaluation/level/1/success_rate" in sweep["iterations"][0]
    assert len(list(tune_dir.glob("*/*/events.out.tfevents.*"))) == 2

    in_process = tmp_path / "in_process"
    assert train(["train", SWEEP, "--no-tune", "--stop-iters", "1", "--output-dir", in_process,
                 *[a for s in SCRIPTED for a in ("--set", s)], "--set", scripted_model_config("[1.0, 0.0]")]) == 0
    single = json.loads((in_process / "summary.json").read_text())
    assert set(single) == set(sweep) and set(single["final"]) == set(sweep["final"])
    assert set(single["evaluation"]) == set(sweep["evaluation"]) == {"before", "after"}
    for when in ("before", "after"):
        assert set(single["evaluation"][when]) == set(sweep["evaluation"][when])
        for key in ("success_rate", "pass_at_k", "num_episodes", "turns_mean", "parse_error_rate"):
            assert single["evaluation"][when][key] == sweep["evaluation"][when][key], (when, key)
    assert set(single["iterations"][0]) == set(sweep["iterations"][0])
    events = list(in_process.glob("*/in_process/events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert (events[0].parent / "progress.csv").exists() and (events[0].parent / "result.json").exists()


@pytest.mark.slow  # two Tune trials of the tiny LLM: ~22 s on 2 cores
def test_the_sweep_example_runs_on_the_tiny_model(ray_session, tiny_model, tmp_path):
    out = tmp_path / "sweep"
    overrides = [*tiny_overrides(tiny_model), "evaluation.interval=1", "group_size=2", "tasks_per_iteration=2"]
    assert train(["train", SWEEP, "--stop-iters", "1", "--output-dir", out,
                 *[a for s in overrides for a in ("--set", s)]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(t["config"]["lr"] for t in summary["trials"]) == [0.0001, 0.0003]
    assert summary["best_trial"] in {t["trial_id"] for t in summary["trials"]}
    assert all(0.0 <= t["final"]["eval_success_after"] <= 1.0 for t in summary["trials"])
    assert summary["evaluation"]["before"]["num_episodes"] == 3 and summary["evaluation"]["after"]["iteration"] == 1
    assert summary["iterations"][0]["evaluation/num_episodes"] == 3
    assert summary["final"]["eval_success_after"] == summary["iterations"][0]["evaluation/success_rate"]
