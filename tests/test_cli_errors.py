"""Bad input to ``python -m rllib_seeupo train|eval|plot``: exit code 2 and one line on
stderr naming the file, key or value, before Ray starts and before any output is written."""

import json
from pathlib import Path

import pytest
import ray

from rllib_seeupo import cli
from rllib_seeupo.cli import main
from rllib_seeupo.experiment import ConfigError, load_experiment, read_yaml, validate_experiment

ROOT = Path(__file__).resolve().parents[1]
BANDIT = ROOT / "tuned_examples" / "bandit_seeupo.yaml"
TOOL = ROOT / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml"


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """``run(args) -> (exit code, stderr lines)``, in an empty folder, with Ray's start-up
    made a test failure."""
    monkeypatch.chdir(tmp_path)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cli, "_init_ray", no_ray)
    monkeypatch.setattr(ray, "init", no_ray)
    ray_was_up = ray.is_initialized()

    def run(args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err.splitlines()

    yield run
    assert ray.is_initialized() == ray_was_up


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _assert_fails(run_cli, args, *expected, created=()):
    code, lines = run_cli(args)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    for path in created:
        assert not Path(path).exists(), path
    return lines[0]


TRAIN_CASES = {
    # name: (file, extra args, texts the one line contains)
    "malformed yaml": ("bad.yaml", [], ["bad.yaml", "invalid YAML at line 4, column 7"]),
    "bad --set yaml": (BANDIT, ["--set", "lr=[0.1"], ["'lr=[0.1'", "not valid YAML"]),
    "file is a folder": (".", [], ["is a folder"]),
    "missing file": ("nope.yaml", [], ["nope.yaml", "no such"]),
    "unknown seeupo env": (BANDIT, ["--set", "env=seeupo/nope"], ["'seeupo/nope'", "seeupo/tool_tasks"]),
    "unknown gym env": (BANDIT, ["--set", "env=CartPoel-v1"], ["'CartPoel-v1'"]),
    "env without prefix": (BANDIT, ["--set", "env=bandit"], ["'bandit'", "seeupo/bandit"]),
    "unknown env_config key (bandit)": (BANDIT, ["--set", "env_config.foo=1"], ["'foo'", "seeupo/bandit", "num_turns"]),
    "unknown env_config key (tool_tasks)": (TOOL, ["--set", "env_config.foo=1"], ["'foo'", "seeupo/tool_tasks", "max_turns"]),
    "bad env_config value": (TOOL, ["--set", "env_config.max_turns=0"], ["seeupo/tool_tasks", "max_turns"]),
    "env_config not a mapping": (BANDIT, ["--set", "env_config=3"], ["config.env_config must be a mapping"]),
    "unknown evaluation split": (TOOL, ["--set", "evaluation.split=dev"], ["evaluation.split", "'dev'"]),
    "unknown model alias": (TOOL, ["--set", "model_config.model=smollm3"], ["'smollm3'", "smollm2-135m-instruct"]),
    "bare hub id": (TOOL, ["--set", "model_config.model=Qwen/Qwen3-14B"], ["'hf:Qwen/Qwen3-14B'"]),
    "unknown model_config key": (TOOL, ["--set", "model_config.foo=1"], ["'foo'", "max_new_tokens"]),
    "bad model_config.dtype": (TOOL, ["--set", "model_config.dtype=float16"], ["model_config", "dtype", "'float16'"]),
    "bad logprob_chunk_tokens": (TOOL, ["--set", "model_config.logprob_chunk_tokens=0"], ["logprob_chunk_tokens", "0"]),
    "bad gradient_checkpointing": (TOOL, ["--set", "model_config.gradient_checkpointing=2"], ["gradient_checkpointing", "true or false", "2"]),
    "unknown engine kind": (TOOL, ["--set", "model_config.engine=sglang"], ["engine", "'sglang'", "vllm"]),
    "unknown engine setting": (TOOL, ["--set", "model_config.engine.gpus=2"], ["engine setting", "'gpus'"]),
    "vllm setting on transformers": (TOOL, ["--set", "model_config.engine.enforce_eager=false"],
                                     ["engine.enforce_eager", "vllm engine"]),
    "bad tensor_parallel_size": (TOOL, ["--set", "model_config.engine={kind: vllm, tensor_parallel_size: 0}"],
                                 ["engine.tensor_parallel_size", "positive int"]),
    "bad gpu_memory_utilization": (TOOL, ["--set", "model_config.engine={kind: vllm, gpu_memory_utilization: 1.5}"],
                                   ["engine.gpu_memory_utilization", "(0, 1]", "1.5"]),
    "bad enforce_eager": (TOOL, ["--set", "model_config.engine={kind: vllm, enforce_eager: maybe}"],
                          ["engine.enforce_eager", "true or false"]),
    "engine kwargs overriding a setting": (TOOL, ["--set", "model_config.engine={kind: vllm, kwargs: {dtype: float16}}"],
                                           ["engine.kwargs.dtype", "set by the engine"]),
    "engine kwargs overriding LoRA serving": (TOOL, ["--set", "model_config.engine={kind: vllm, kwargs: {max_loras: 2}}"],
                                              ["engine.kwargs.max_loras", "set by the engine"]),
    "bad num_engines": (TOOL, ["--set", "model_config.engine.num_engines=-1"], ["engine.num_engines", ">= 0"]),
    "bad engine placement": (TOOL, ["--set", "model_config.engine={num_engines: 1, placement: mixed}"],
                             ["engine.placement", "colocated"]),
    "more engines than env runners": (TOOL, ["--set", "model_config.engine.num_engines=2"],
                                      ["engine.num_engines is 2", "1 env runner"]),
    "colocated engines not one per learner": (TOOL, ["--set", "num_env_runners=2", "--set", "num_learners=2", "--set",
                                               "model_config.engine={num_engines: 1, placement: colocated}"],
                                               ["engine.num_engines is 1", "each learner's GPU", "set it to 2"]),
    "colocated engines on a learner's GPU share": (TOOL, ["--set", "num_env_runners=1", "--set", "num_gpus_per_learner=0.5",
                                                   "--set", "model_config.engine={num_engines: 1, placement: colocated}"],
                                                   ["num_gpus_per_learner is 0.5", "whole GPU"]),
    "colocated engine with tensor parallelism": (TOOL, ["--set", "num_env_runners=1", "--set", "num_gpus_per_learner=1",
                                                 "--set", "model_config.engine={kind: vllm, num_engines: 1, placement: colocated, "
                                                 "gpu_memory_utilization: 0.5, tensor_parallel_size: 2}"],
                                                 ["tensor_parallel_size is 2", "one GPU"]),
    "GPUs for env runners that hold no model": (TOOL, ["--set", "num_env_runners=1", "--set", "num_gpus_per_env_runner=1",
                                                "--set", "model_config.engine.num_engines=1"],
                                                ["num_gpus_per_env_runner", "hold no model"]),
    "more CPUs than the machine has": (TOOL, ["--set", "num_env_runners=4096"], ["asks Ray for 4097 CPUs", "num_env_runners"]),
    "engine actors for RLlib's PPO": (ROOT / "tuned_examples" / "tool_tasks_ppo_smollm2.yaml",
                                      ["--set", "model_config.engine.num_engines=1"], ["engine.num_engines", "'PPO'"]),
    "bad micro_batch_tokens": (TOOL, ["--set", "micro_batch_tokens=0"], ["micro_batch_tokens", ">= 1"]),
    "bad module_class": (BANDIT, ["--set", "module_class=nope.Module"], ["'nope.Module'"]),
    "key through a value": (BANDIT, ["--set", "lr.x=1"], ["'lr.x=1'", "config.lr is 0.1"]),
    "empty key": (BANDIT, ["--set", "=1"], ["'=1'", "empty key"]),
    "empty key part": (BANDIT, ["--set", "env_config..seed=1"], ["empty key"]),
    "no = in --set": (BANDIT, ["--set", "lr"], ["key=value", "'lr'"]),
    "non-numeric stop": (BANDIT, ["--set", "stop.training_iteration=abc"], ["stop.training_iteration", "'abc'"]),
    "nested stop": (BANDIT, ["--set", "stop.env_runners.episode_return_mean=1"], ["stop.env_runners", "'/'"]),
    "stop not a mapping": (BANDIT, ["--set", "stop=5"], ["stop must be a mapping"]),
    "bad num_samples": (BANDIT, ["--set", "num_samples=0"], ["num_samples", ">= 1"]),
    "bad checkpoint_freq": (BANDIT, ["--set", "checkpoint_freq=often"], ["checkpoint_freq", "'often'"]),
    "bad mode": (BANDIT, ["--set", "mode=maximum"], ["mode", "'maximum'"]),
    "unknown run": (BANDIT, ["--set", "run=SeeUPPO"], ["'SeeUPPO'"]),
    "unknown warm_start key": (TOOL, ["--set", "warm_start.epochs=2"], ["warm_start", "'epochs'", "steps"]),
    "bad warm_start.steps": (TOOL, ["--set", "warm_start.steps=0"], ["warm_start.steps", ">= 1"]),
    "bad warm_start.lr": (TOOL, ["--set", "warm_start.lr=-1"], ["warm_start.lr", "positive"]),
    "warm_start without an LLM": (BANDIT, ["--set", "warm_start.steps=2"], ["warm_start", "demonstrations"]),
    "--stop-iters 0": (BANDIT, ["--stop-iters", "0"], ["--stop-iters", ">= 1"]),
    "--stop-iters abc": (BANDIT, ["--stop-iters", "abc"], ["--stop-iters", "'abc'"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_errors(run_cli, tmp_path, case):
    file, extra, expected = TRAIN_CASES[case]
    if file == "bad.yaml":
        _write(tmp_path / file, "x:\n  env: seeupo/bandit\n  run: [SeeUPO\n  stop: {}\n")
    out = tmp_path / "out"
    _assert_fails(run_cli, ["train", file, *extra, "--no-tune", "--output-dir", out], *expected,
                  created=[out, tmp_path / "results"])


def test_train_default_output_dir_is_not_created_on_error(run_cli, tmp_path):
    _assert_fails(run_cli, ["train", BANDIT, "--set", "env_config.foo=1"], "'foo'", created=[tmp_path / "results"])


@pytest.mark.parametrize("where", ["file", "inside a file"])
def test_train_output_dir_that_is_a_file(run_cli, tmp_path, where):
    existing = _write(tmp_path / "taken", "")
    out = existing if where == "file" else existing / "run"
    _assert_fails(run_cli, ["train", BANDIT, "--output-dir", out], "--output-dir", "existing file")
    assert existing.is_file() and existing.read_text() == ""


def test_base_file_errors_name_the_file(run_cli, tmp_path):
    variant = _write(tmp_path / "variant.yaml", "variant:\n  base: missing.yaml\n")
    _assert_fails(run_cli, ["train", variant], "variant.yaml", "'missing.yaml'")
    _write(tmp_path / "main.yaml", "main:\n  env: seeupo/bandit\n  run: SeeUPO\n  stop: {training_iteration: 1\n")
    _write(variant, "variant:\n  base: main.yaml\n")
    _assert_fails(run_cli, ["train", variant], "main.yaml", "invalid YAML at line 5")


EVAL_CASES = {
    "unknown env": (["--env", "nope"], ["'seeupo/nope'", "seeupo/tool_tasks"]),
    "unknown env_config key": (["--env", "tool_tasks", "--env-config", "foo=1"], ["'foo'", "seeupo/tool_tasks", "max_turns"]),
    "categories on tool_tasks": (["--env", "tool_tasks", "--categories", "a,b"], ["'categories'", "seeupo/tool_tasks"]),
    "bad --env-config yaml": (["--env", "tool_tasks", "--env-config", "max_turns=[3"], ["--env-config", "'max_turns=[3'"]),
    "dotted --env-config key": (["--env", "tool_tasks", "--env-config", "a.b=3"], ["--env-config", "'a.b=3'"]),
    "unknown split": (["--env", "tool_tasks", "--split", "dev"], ["'dev'"]),
    "k 0": (["--env", "tool_tasks", "--k", "0"], ["--k", ">= 1"]),
    "episodes 0": (["--env", "tool_tasks", "--episodes", "0"], ["--episodes", ">= 1"]),
    "episodes negative": (["--env", "tool_tasks", "--episodes", "-3"], ["--episodes", ">= 1"]),
    "batch size 0": (["--env", "tool_tasks", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    "threads 0": (["--env", "tool_tasks", "--threads", "0"], ["--threads", ">= 1"]),
    "unknown model alias": (["--env", "tool_tasks", "--model", "smollm3"], ["--model", "'smollm3'", "smollm2-135m-instruct"]),
    "bare hub id": (["--env", "tool_tasks", "--model", "Qwen/Qwen3-8B"], ["'hf:Qwen/Qwen3-8B'"]),
    "empty hub id": (["--env", "tool_tasks", "--model", "hf:"], ["'hf:'"]),
    "folder that is no model": (["--env", "tool_tasks", "--model", "."], ["--model", "config.json"]),
    "unknown model_config key": (["--env", "tool_tasks", "--model-config", "foo=1"], ["'foo'", "max_new_tokens"]),
    "bad engine setting": (["--env", "tool_tasks", "--model-config", "engine={kind: vllm, gpu_memory_utilization: 0}"],
                           ["engine.gpu_memory_utilization", "(0, 1]"]),
    "missing --env": ([], ["--env"]),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval_errors(run_cli, tmp_path, case):
    extra, expected = EVAL_CASES[case]
    out = tmp_path / "eval"
    _assert_fails(run_cli, ["eval", *extra, "--output-dir", out], *expected, created=[out])


def test_eval_output_dir_that_is_a_file(run_cli, tmp_path):
    existing = _write(tmp_path / "taken", "")
    _assert_fails(run_cli, ["eval", "--env", "tool_tasks", "--output-dir", existing], "--output-dir", "existing file")


PLOT_CASES = {
    "empty object": ("{}", ["summary.json", "'algorithm'"]),
    "a list": ("[1, 2]", ["summary.json", "JSON list"]),
    "not json": ("iterations: []", ["summary.json", "not JSON", "line 1"]),
    "iterations not a list": ('{"algorithm": "a", "env": "e", "iterations": 3}', ["'iterations'"]),
    "a record not numeric": ('{"algorithm": "a", "env": "e", "iterations": [{"iteration": "x"}]}', ["iterations[0]", "'iteration'"]),
    "missing file": (None, ["summary.json", "no such"]),
}


@pytest.mark.parametrize("case", list(PLOT_CASES))
def test_plot_errors(run_cli, tmp_path, case):
    text, expected = PLOT_CASES[case]
    summary = tmp_path / "summary.json"
    if text is not None:
        _write(summary, text)
    _assert_fails(run_cli, ["plot", summary], *expected, created=[tmp_path / "learning_curve.png"])


GOOD_SUMMARY = json.dumps({"algorithm": "SeeUPO", "env": "seeupo/bandit", "iterations": [{"iteration": 1.0, "reward_mean": 0.5}]})


@pytest.mark.parametrize("output, expected", [("{tmp}", "is a folder"), ("{tmp}/new/curve.xyz", "'xyz'"),
                                              ("{tmp}/taken/curve.png", "existing file")])
def test_plot_output_errors(run_cli, tmp_path, output, expected):
    summary = _write(tmp_path / "summary.json", GOOD_SUMMARY)
    _write(tmp_path / "taken", "")
    _assert_fails(run_cli, ["plot", summary, "--output", output.format(tmp=tmp_path)], "--output", expected,
                  created=[tmp_path / "new", tmp_path / "learning_curve.png"])


def test_plot_a_folder(run_cli, tmp_path):
    _assert_fails(run_cli, ["plot", tmp_path], "is a folder")


def test_the_tuned_examples_pass_the_driver_checks():
    """The embedded envs build and the packaged model name resolves, with no model loaded."""
    for path in (BANDIT, TOOL, ROOT / "tuned_examples" / "tool_tasks_ppo_smollm2.yaml"):
        validate_experiment(load_experiment(path), path)


def test_a_relative_model_folder_becomes_absolute(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # checked, never loaded
    monkeypatch.chdir(tmp_path)
    experiment = load_experiment(TOOL, ["model_config.model=model"])
    validate_experiment(experiment)
    assert experiment.config["model_config"]["model"] == str((tmp_path / "model").resolve())


def test_model_names_are_aliases_folders_or_explicit_hub_ids(tmp_path):
    from rllib_seeupo.llm.models import check_model, resolve_model

    assert resolve_model("hf:Qwen/Qwen3-14B") == "Qwen/Qwen3-14B"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="'hf:Qwen/Qwen3-14B'"):
        check_model("Qwen/Qwen3-14B")  # the command line never looks up a name without the prefix
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        check_model("smollm3")


def test_yaml_numbers_and_errors():
    assert read_yaml("a: [1e-4, 1.0e-6, 3e2, abc]", "x") == {"a": [1e-4, 1e-6, 300.0, "abc"]}
    with pytest.raises(ConfigError, match=r"f.yaml: invalid YAML at line 2, column \d+"):
        read_yaml("a: 1\n b: [\n", "f.yaml")


def test_a_run_whose_stop_keys_are_in_no_result_ends(capsys):
    record, result = {"iteration": 1.0}, {"training_iteration": 1, "env_runners": {"episode_return_mean": 0.5}}
    cli._check_stop_keys(record, result, {"training_iteration": 5, "env_runners/episode_return_mean": 1})
    cli._check_stop_keys(record, result, {"training_iteration": 5, "training_iteraton": 5})
    assert "training_iteraton" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="training_iteraton"):
        cli._check_stop_keys(record, result, {"training_iteraton": 5})
