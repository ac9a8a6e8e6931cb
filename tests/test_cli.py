"""The YAML loader and the CLI: the summary contract, the plot, Tune grids, clear errors."""

import json
import re
from pathlib import Path

import pytest

from rllib_seeupo.cli import main
from rllib_seeupo.experiment import build_config, load_experiment, parse_override, search_space

ROOT = Path(__file__).resolve().parents[1]
BANDIT_YAML = ROOT / "tuned_examples" / "bandit_seeupo.yaml"


def test_every_tuned_example_loads_and_validates():
    files = sorted((ROOT / "tuned_examples").glob("*.yaml"))
    assert BANDIT_YAML in files
    for path in files:
        experiment = load_experiment(path)
        build_config(experiment).validate()


def _needs(path: Path) -> tuple[int, float] | None:
    """``(GPUs, GiB each)`` of a tuned example's ``# Needs: N x G GB GPU(s)`` header line."""
    match = re.search(r"^# Needs: (\d+) x (\d+) GB GPU", path.read_text(), re.M)
    return (int(match[1]), int(match[2]) * 1e9 / 2**30) if match else None


def test_dry_run_prints_resources_and_memory_for_every_tuned_example(tmp_path, monkeypatch, capsys):
    from rllib_seeupo.llm.module import checked_engine
    from rllib_seeupo.placement import GB, env_runner_memory, learner_memory, resources

    datasets = tmp_path / "appworld" / "data" / "datasets"  # AppWorld's split files (no data needed)
    datasets.mkdir(parents=True)
    for split in ("train", "dev", "test_normal", "test_challenge"):
        (datasets / f"{split}.txt").write_text("50e1ac9_1\n")
    monkeypatch.setenv("APPWORLD_ROOT", str(tmp_path / "appworld"))
    gpu_examples = 0
    for path in sorted((ROOT / "tuned_examples").glob("*.yaml")):
        assert main(["train", str(path), "--dry-run", "--output-dir", str(tmp_path / "unused")]) == 0, path
        out = capsys.readouterr().out
        assert "dry run" in out and "Ray resources:" in out and "total:" in out, path
        config = build_config(load_experiment(path))
        if "LLMRLModule" in path.read_text():
            assert "Learner memory, estimated" in out, path
            assert "Env runner memory, estimated" in out or "Engine actor memory, estimated" in out, path
        needs = _needs(path)
        if "qwen3" in path.name:
            assert needs, f"{path.name}: its header names no hardware ('# Needs: N x G GB GPU')"
        if needs is None:
            continue
        gpu_examples += 1
        count, gib = needs
        rows = resources(config)
        assert sum(r["count"] * r["gpus"] for r in rows) <= count, path
        parts = learner_memory(config)
        learner, runner = parts["total"] / GB, env_runner_memory(config)["total"] / GB
        assert learner <= gib and runner <= gib, (path, learner, runner)
        learners = max(1, config.num_learners)
        engine = checked_engine(config.model_config.get("engine", "transformers"))
        if engine["num_engines"]:  # the engine actors hold the model and the live episodes
            holders = engine["num_engines"] if engine["num_gpus_per_engine"] else 0
        else:
            holders = config.num_env_runners if config.num_gpus_per_env_runner else 0
        if engine["placement"] == "colocated":  # on its learner's GPU, asleep while the learners update
            resident = (parts["weights"] + parts["gradients"] + parts["optimizer"]) / GB
            assert engine["num_engines"] == learners <= count and resident + runner <= gib and learner <= gib, path
        else:
            assert learners * learner + holders * runner <= count * gib, path
    assert not (tmp_path / "unused").exists()  # a dry run writes nothing
    assert gpu_examples == 6


# Every baseline and ablation, on the bandit and on the embedded env (docs/design.md section 1.6).
VARIANTS = (
    "seeupo_forward", "seeupo_random", "seeupo_parallel", "seeupo_no_norm",
    "seeupo_no_compound", "grpo", "gspo", "rloo", "gigpo", "grae_reinforce", "ppo",
)
# Variants of one env only: the bandit's main example keeps the batch-wide advantage scale,
# the embedded env's main job takes the per-group std, so each has the other as an ablation.
ENV_VARIANTS = {"bandit": ("seeupo_group_std",), "tool_tasks": ("seeupo_release", "seeupo_batch_norm")}
# Settings a variant shares with its main example, so that the comparison is fair.
SHARED = (
    "env_config", "module_class", "model_config", "callbacks", "seed", "lr", "grad_clip", "num_envs_per_env_runner",
)


@pytest.mark.parametrize("env, suffix", [("bandit", ""), ("tool_tasks", "_smollm2")])
def test_every_variant_exists_with_the_main_examples_env_model_and_budget(env, suffix):
    main_example = load_experiment(ROOT / "tuned_examples" / f"{env}_seeupo{suffix}.yaml")
    main_norm = build_config(main_example).advantage_norm
    for variant in VARIANTS + ENV_VARIANTS[env]:
        experiment = load_experiment(ROOT / "tuned_examples" / f"{env}_{variant}{suffix}.yaml")
        assert experiment.env == main_example.env, variant
        assert experiment.stop == main_example.stop and experiment.evaluation == main_example.evaluation, variant
        assert experiment.torch_threads == main_example.torch_threads, variant
        for key in SHARED:
            assert experiment.config.get(key) == main_example.config.get(key), (variant, key)
        if variant != "ppo":
            for key in ("group_size", "tasks_per_iteration", "kl_coeff"):
                assert experiment.config.get(key) == main_example.config.get(key), (variant, key)
        if experiment.run == "SeeUPO" and variant not in ("seeupo_no_norm", "seeupo_group_std", "seeupo_batch_norm",
                                                          "seeupo_release"):
            # An ablation of the order or the compound factor keeps the main example's scale.
            assert build_config(experiment).advantage_norm == main_norm, variant


def test_baselines_on_the_embedded_env_keep_what_defines_them():
    def built(variant):
        return build_config(load_experiment(ROOT / "tuned_examples" / f"tool_tasks_{variant}_smollm2.yaml"))

    grpo = built("grpo")
    assert (grpo.update_order, grpo.advantage_norm, grpo.ratio_level, grpo.compound_factor) == (
        "parallel", "group_std", "token", "none")
    gigpo = built("gigpo")
    assert (gigpo.update_order, gigpo.advantage_norm, gigpo.ratio_level, gigpo.compound_factor) == (
        "parallel", "none", "token", "none")
    assert (gigpo.step_advantage_weight, gigpo.step_discount) == (1.0, 0.95)
    assert built("seeupo").step_advantage_weight == 0.0
    reinforce = built("grae_reinforce")
    assert reinforce.num_epochs_per_turn == 1 and reinforce.minibatch_size is None
    assert reinforce.clip_param == float("inf")
    assert built("seeupo_forward").update_order == "forward"
    assert (built("seeupo").advantage_norm, built("seeupo_batch_norm").advantage_norm) == ("group_std", "batch")
    release = built("seeupo_release")
    assert release.advantage_norm == "batch"
    assert (release.old_policy, release.compound_factor, release.advantage_clip_mode) == ("current", "stepwise", "clamp")
    assert release.skip_zero_advantage_updates is False
    shared = build_config(load_experiment(ROOT / "tuned_examples" / "bandit_shared_seeupo_release.yaml"))
    assert (shared.advantage_norm, shared.old_policy, shared.advantage_clip_mode) == ("batch", "current", "clamp")


def test_base_file_is_applied_as_a_merge_patch(tmp_path):
    (tmp_path / "main.yaml").write_text(
        "main:\n  env: seeupo/bandit\n  run: SeeUPO\n  stop: {training_iteration: 5}\n"
        "  config:\n    env_config: {num_turns: 3, kind: needle}\n    lr: 0.1\n    kl_coeff: 0.0\n"
    )
    (tmp_path / "variant.yaml").write_text(
        "variant:\n  base: main.yaml\n  run: GRPO\n"
        "  config:\n    env_config: {num_turns: 4}\n    kl_coeff: null\n    lr: {grid_search: [0.1, 0.3]}\n"
    )
    experiment = load_experiment(tmp_path / "variant.yaml", ["stop.training_iteration=2"])
    assert experiment.name == "variant" and experiment.run == "GRPO" and experiment.env == "seeupo/bandit"
    assert experiment.config == {"env_config": {"num_turns": 4, "kind": "needle"}, "lr": {"grid_search": [0.1, 0.3]}}
    assert experiment.stop == {"training_iteration": 2}
    (tmp_path / "main.yaml").write_text("main:\n  base: variant.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_experiment(tmp_path / "variant.yaml")


def test_run_ppo_gets_the_turn_agent_wiring():
    from ray.rllib.algorithms.ppo import PPOConfig

    from rllib_seeupo import SHARED_MODULE_ID
    from rllib_seeupo.llm.module import LLMRLModule
    from rllib_seeupo.llm.ppo import PadTurnColumns

    config = build_config(load_experiment(ROOT / "tuned_examples" / "tool_tasks_ppo_smollm2.yaml"))
    assert isinstance(config, PPOConfig) and config.algo_class.__name__ == "PPO"
    assert set(config.policies) == {SHARED_MODULE_ID} and config.policy_mapping_fn("turn_2") == SHARED_MODULE_ID
    assert config._learner_connector is PadTurnColumns
    assert config.episodes_to_numpy is False and config.batch_mode == "complete_episodes"
    assert config.rl_module_spec.module_class is LLMRLModule
    main_job = load_experiment(ROOT / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml")
    assert config.model_config["lora"] == main_job.config["model_config"]["lora"] and config.use_kl_loss is False


def test_sampled_search_values_become_tune_domains(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    sampled = tmp_path / "sampled.yaml"
    sampled.write_text(
        BANDIT_YAML.read_text()
        .replace("    lr: 0.1\n", "    lr: {loguniform: [0.01, 0.3]}\n    clip_param: {uniform: [0.1, 0.3]}\n")
        .replace("    group_size: 8\n", "    group_size: {randint: [4, 9]}\n")
        .replace("    update_order: reverse\n", "    update_order: {choice: [reverse, parallel]}\n")
    )
    experiment = load_experiment(sampled)
    assert experiment.has_search_space()
    space = search_space(experiment)
    assert isinstance(space["lr"], Float) and type(space["lr"].sampler).__name__ == "_LogUniform"
    assert (space["lr"].lower, space["lr"].upper) == (0.01, 0.3)
    assert isinstance(space["clip_param"], Float) and type(space["clip_param"].sampler).__name__ == "_Uniform"
    assert isinstance(space["group_size"], Integer) and (space["group_size"].lower, space["group_size"].upper) == (4, 9)
    assert isinstance(space["update_order"], Categorical) and space["update_order"].categories == ["reverse", "parallel"]
    config = build_config(experiment)  # one representative value per axis, valid
    config.validate()
    assert config.lr == pytest.approx((0.01 * 0.3) ** 0.5) and config.group_size == 4
    assert config.update_order == "reverse" and config.clip_param == pytest.approx(0.2)
    for bad, message in (
        ("{loguniform: [0.0, 0.3]}", "config.clip_param: .*low > 0"),
        ("{uniform: [0.3, 0.1]}", "low < high"),
        ("{randint: [1.5, 4]}", "integers"),
        ("{choice: []}", "non-empty list"),
    ):
        with pytest.raises(ValueError, match=message):
            load_experiment(sampled, [f"clip_param={bad}"])


def test_overrides_parse_as_yaml_and_nest():
    assert parse_override("lr=0.5") == (["config", "lr"], 0.5)
    assert parse_override("env_config.num_turns=4") == (["config", "env_config", "num_turns"], 4)
    assert parse_override("stop.training_iteration=3") == (["stop", "training_iteration"], 3)
    experiment = load_experiment(BANDIT_YAML, ["env_config.num_turns=4", "update_order=forward"])
    assert experiment.config["env_config"]["num_turns"] == 4
    assert build_config(experiment).update_order == "forward"


def test_unknown_keys_are_errors_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  env: seeupo/bandit\n  run: SeeUPO\n  config:\n    group_sise: 4\n")
    with pytest.raises(ValueError, match="group_sise"):
        build_config(load_experiment(bad))
    bad.write_text("x:\n  env: seeupo/bandit\n  run: SeeUPO\n  stopp: {}\n")
    with pytest.raises(ValueError, match="stopp"):
        load_experiment(bad)
    assert main(["train", str(bad)]) == 2
    main_job = ROOT / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml"
    with pytest.raises(ValueError, match="evaluation.before"):
        load_experiment(main_job, ["evaluation.before=sometimes"])
    assert load_experiment(main_job, ["evaluation.before=false"]).evaluation["before"] is False


def test_bad_value_fails_before_ray_starts(capsys):
    assert main(["train", str(BANDIT_YAML), "--set", "update_order=sideways", "--no-tune"]) == 2
    assert "SeeUPOConfig.update_order" in capsys.readouterr().err


def test_train_no_tune_writes_summary_plot_and_checkpoint(ray_session, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(BANDIT_YAML), "--no-tune", "--stop-iters", "3", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "SeeUPO" and summary["env"] == "seeupo/bandit"
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2, 3]
    assert 0 < summary["final"]["optimality_ratio"] <= 1
    assert "learners/shared_policy/turn_0/policy_loss" in summary["iterations"][0]
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "checkpoint").is_dir()
    printed = capsys.readouterr().out
    assert printed.count("iter ") == 3 and "J/J*" in printed and "summary.json" in printed


def test_train_with_tune_grid_search(ray_session, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        BANDIT_YAML.read_text().replace("    lr: 0.1\n", "    lr:\n      grid_search: [0.05, 0.2]\n")
    )
    out = tmp_path / "tune"
    assert main(["train", str(grid), "--stop-iters", "2", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["trials"]) == 2
    assert sorted(t["config"]["lr"] for t in summary["trials"]) == [0.05, 0.2]
    assert summary["best_trial"] in {t["trial_id"] for t in summary["trials"]}
    assert len(summary["iterations"]) == 2 and summary["checkpoint"]


@pytest.mark.slow  # two Tune trials: ~30 s on 2 cores; the conversion itself is tested above
def test_train_with_tune_sampled_values(ray_session, tmp_path):
    sampled = tmp_path / "sampled.yaml"
    sampled.write_text(
        BANDIT_YAML.read_text()
        .replace("  checkpoint_freq: 0\n", "  checkpoint_freq: 0\n  num_samples: 2\n")
        .replace("    lr: 0.1\n", "    lr: {loguniform: [0.01, 0.3]}\n")
    )
    out = tmp_path / "tune"
    assert main(["train", str(sampled), "--stop-iters", "1", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rates = [t["config"]["lr"] for t in summary["trials"]]
    assert len(rates) == 2 and len(set(rates)) == 2 and all(0.01 <= r <= 0.3 for r in rates)
    assert summary["checkpoint"]


def test_llm_run_reports_held_out_success_before_and_after(ray_session, tiny_model, tmp_path, monkeypatch):
    """The main job's file (make train), shrunk: its warm start, then held-out success before
    (the warm-started model's) and after, and the eval command on its checkpoint."""
    monkeypatch.setenv("RLLIB_SEEUPO_CACHE", str(tmp_path / "cache"))
    main_job = ROOT / "tuned_examples" / "tool_tasks_dependent_seeupo_smollm2.yaml"
    assert "evaluation:" in (ROOT / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml").read_text()
    out = tmp_path / "llm"
    args = [
        "train", str(main_job), "--no-tune", "--stop-iters", "1",
        "--output-dir", str(out), "--set", f"model_config.model={tiny_model}", "--set", "model_config.lora.rank=2",
        "--set", "evaluation.num_tasks=4", "--set", "group_size=2", "--set", "tasks_per_iteration=2",
        "--set", "num_envs_per_env_runner=4", "--set", "model_config.max_new_tokens=8",
        "--set", "warm_start.demonstrations=4", "--set", "warm_start.steps=2",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    warm = summary["warm_start"]
    assert warm["steps"] == 2 and len(warm["loss"]) == 2 and warm["path"].startswith(str(tmp_path / "cache"))
    final = summary["final"]
    assert 0.0 <= final["eval_success_before"] <= 1.0 and 0.0 <= final["eval_success_after"] <= 1.0
    assert summary["evaluation"]["before"]["num_episodes"] == 4
    assert "rollouts/success_rate" in summary["iterations"][0]
    # Held-out evaluation is the algorithm's: in the result of the (last) iteration, and in
    # TensorBoard's event files, written by Tune's own logger as for a Tune trial.
    assert summary["iterations"][0]["evaluation/success_rate"] == final["eval_success_after"]
    assert summary["evaluation"]["after"]["iteration"] == 1
    assert len(list(out.glob("*/in_process/events.out.tfevents.*"))) == 1

    # The eval CLI restores the trained module from the checkpoint: greedy decoding on the
    # same held-out tasks reproduces the run's own "after" evaluation.
    eval_dir = tmp_path / "eval"
    assert main([
        "eval", "--env", "seeupo/tool_tasks", "--model", str(out / "checkpoint"), "--episodes", "4",
        "--env-config", "max_turns=3", "--env-config", "parse_error_penalty=0.0", "--env-config", "levels=[1,2,5,6,7]",
        "--env-config", "level_weights=[1,1,2,2,2]", "--output-dir", str(eval_dir),
    ]) == 0
    report = json.loads((eval_dir / "eval.json").read_text())
    after = summary["evaluation"]["after"]
    for key in ("num_episodes", "success_rate", "turns_mean", "parse_error_rate", "truncation_rate"):
        assert report[key] == pytest.approx(after[key]), key
    assert "| all | 4 |" in (eval_dir / "eval.md").read_text()


def test_evaluation_reports_per_group_figures_and_a_markdown_table():
    """An oracle on the embedded env: every level group solved; the table has a row each."""
    from envs.text import decode_messages
    from envs.tool_tasks import make_task, oracle_response
    from rllib_seeupo.evaluation import evaluate, markdown_table

    # The policy sees only the chat: keep tasks whose request names them uniquely.
    by_request = {}
    for t in range(10**6, 10**6 + 60):
        by_request.setdefault(make_task(t).request, []).append(make_task(t))
    tasks = {ts[0].request: ts[0] for ts in by_request.values() if len(ts) == 1}

    def oracle(observations, sample):
        return [oracle_response(tasks[m[1]["content"]], m) for m in map(decode_messages, observations)]

    ids = [task.task_id for task in tasks.values()]
    result = evaluate(oracle, "tool_tasks", {}, ids, k=2, batch_size=16)
    assert result["group_by"] == "level" and sorted(result["groups"]) == ["1", "2", "3", "4"]
    assert result["num_episodes"] == 2 * len(ids) and result["success_rate"] == 1.0 and result["pass_at_k"] == 1.0
    assert sum(g["num_episodes"] for g in result["groups"].values()) == 2 * len(ids)
    assert all(g["success_rate"] == 1.0 for g in result["groups"].values())
    # Beside each level, the best blind policy's success on the same tasks (the env's own
    # reference figures): always-add-or-remove on level 4, a constant answer on level 2.
    from envs.tool_tasks import reference_success

    reference = reference_success(ids, levels=(1, 2, 3, 4))
    assert {name: g["blind_success"] for name, g in result["groups"].items()} == {
        str(level): figures["blind"] for level, figures in reference.items()}
    assert result["groups"]["1"]["blind_success"] == 1.0 and result["groups"]["4"]["blind_success"] < 1.0
    table = markdown_table(result)
    assert "| level 4 |" in table and "avg@2" in table and "best blind" in table and table.count("\n") == 2 + 4 + 1


def test_eval_cli_errors_name_the_problem(capsys):
    assert main(["eval", "--env", "tool_tasks", "--split", "dev", "--output-dir", "unused"]) == 2
    assert "'dev'" in capsys.readouterr().err


def test_eval_cli_on_bfcl_reports_per_category_rows(tiny_model, tmp_path):
    """BFCL through the eval CLI: a row per category played. The tiny model's 256-token prompt
    budget is far below BFCL's prompts, so every episode ends as truncated: the rate says so."""
    pytest.importorskip("bfcl_eval")
    out = tmp_path / "bfcl"
    assert main([
        "eval", "--env", "bfcl", "--categories", "multi_turn_base,multi_turn_miss_param", "--model", str(tiny_model),
        "--episodes", "3", "--model-config", "max_prompt_tokens=256", "--env-config", "doc_format=compact",
        "--output-dir", str(out),
    ]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["group_by"] == "category" and report["num_episodes"] == 3
    assert report["truncation_rate"] == 1.0 and report["success_rate"] == 0.0
    assert sum(g["num_episodes"] for g in report["groups"].values()) == 3
    table = (out / "eval.md").read_text()
    assert all(f"| {category} |" in table for category in report["groups"])
