"""Every model output is an observation and a reward: property tests with adversarial text
for every env (tool_tasks, BFCL, AppWorld's client side), and one regression test for each
failure measured on earlier versions."""

import ast
import contextlib
import json
import os

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adversarial_text import MODEL_OUTPUT
from envs.text import CallSyntaxError, cut_text, decode_messages, find_call_list, parse_calls
from envs import bfcl
from envs.tool_tasks import tool_tasks

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def step_all(e, actions, reset):
    """Step ``e`` with each action (resetting with ``reset()`` when an episode ends) and
    check what every step must give: no exception, an observation within the space, and
    at the end of an episode a reward and its infos."""
    reset()
    for action in actions:
        agent = e.agent_selection
        e.step(action)
        if not e.agents or all(e.terminations.get(a) or e.truncations.get(a) for a in e.agents):
            info = e.infos[e.agents[0]]
            assert "success" in info and isinstance(e.rewards[e.agents[0]], float)
            reset()
            continue
        obs = e.observe(e.agent_selection)
        assert e.observation_space(agent).contains(obs)
        decode_messages(obs)  # a well-formed chat


# -- tool_tasks -------------------------------------------------------------------------


@PROPERTY
@given(st.lists(MODEL_OUTPUT, min_size=1, max_size=4), st.integers(0, 10**6))
def test_tool_tasks_turns_any_text_into_an_observation(tmp_path_factory, actions, task_id):
    cwd = tmp_path_factory.mktemp("cwd")
    with contextlib.chdir(cwd):
        e = tool_tasks.env(max_turns=3)
        step_all(e, actions, lambda: e.reset(options={"task_id": task_id}))
    assert not os.listdir(cwd)  # no side effect on disk


def _tool_env(task_id=5):
    e = tool_tasks.env(max_turns=4)
    e.reset(options={"task_id": task_id})  # level 3: 9 oranges, 2 lemons, 4 apples, 5 mangos
    return e


def _feedback(e, text):
    e.step(text)
    return e.messages[-1]["content"]


@pytest.mark.parametrize(
    "text",
    [
        "[get_stock(item=[])]",
        "[get_stock({})]",
        "[get_stock(item={1: 2})]",
        "[cd(folder=" + "-" * 3000 + "1)]",
        "[get_stock(item=" + "(" * 150 + "1" + ")" * 150 + ")]",
        "[add_item(item='apple', qty=0x" + "f" * 3900 + ")]",
        "[get_stock(item=" + "not " * 900 + "1)]",
        "[" * 4000,
        "[get_stock(" * 400,
    ],
)
def test_tool_tasks_regressions_are_error_observations(text):
    e = _tool_env()
    before = dict(e.inventory)
    content = _feedback(e, text)
    assert content.startswith("Error") and e.inventory == before
    assert len(content) <= e.max_result_chars + 40


def test_a_call_list_reports_every_call_that_ran_up_to_the_failing_one():
    e = _tool_env()
    content = _feedback(e, '[add_item(item="orange", qty=3), add_item("orange", 3, 4), remove_item(item="lemon", qty=1)]')
    assert content.splitlines() == ["orange: 12", "Error: add_item takes at most 2 arguments, got 3", "(1 later call(s) not run)"]
    assert e.inventory["orange"] == 12 and e.inventory["lemon"] == 2 and e.parse_errors == 0
    assert _feedback(e, '[finish(), add_item(item="lemon", qty=1)]') == "done\n(1 later call(s) not run)"
    assert e.inventory["lemon"] == 2


def test_prose_before_the_call_list_is_ignored_even_with_brackets():
    e = _tool_env()
    assert _feedback(e, 'Step [1]: [get_stock(item="orange")] then [x]') == "9"
    assert parse_calls("a [1] and [b] then [f(x=1)]")[0].kwargs == {"x": 1}
    assert parse_calls('[f(x="]")]')[0].kwargs == {"x": "]"}


def test_repeated_and_doubled_arguments_are_errors_not_collapsed():
    e = _tool_env()
    assert _feedback(e, '[add_item(item="orange", item="apple", qty=1)]') == "Error: add_item: keyword argument 'item' repeated"
    assert e.parse_errors == 1
    assert _feedback(e, '[add_item("orange", item="apple", qty=1)]') == "Error: add_item got two values for 'item'"
    assert e.inventory == e.task.inventory


def test_the_parser_parses_once_however_many_brackets(monkeypatch):
    calls = []
    real = ast.parse
    monkeypatch.setattr(ast, "parse", lambda *a, **k: calls.append(1) or real(*a, **k))
    for text in ["[f(" + "]" * 3990, "[f(x=1)" + "]" * 3990, "[" * 2000 + "f()" + "]" * 1990, "x]" * 2000 + "[f()]"]:
        calls.clear()
        try:
            parse_calls(text)
        except CallSyntaxError:
            pass
        assert len(calls) <= 1, text[:20]


def test_find_call_list_skips_strings_and_comments():
    text = "[f(a='])', b=\"[\", c='''x]''') # ]\n]"
    assert find_call_list("Note [2]: " + text) == (10, 10 + len(text))
    with pytest.raises(CallSyntaxError, match="not closed"):
        find_call_list("[f(a='x)]")
    with pytest.raises(CallSyntaxError, match="do not match"):
        find_call_list("[f(a=1]")
    assert find_call_list("no calls [1, 2]") is None


def test_long_tool_results_are_cut_with_a_marker():
    assert cut_text("x" * 50, 10) == "x" * 10 + "...[cut: 40 more characters]"
    e = _tool_env()
    content = _feedback(e, f'[get_stock(item="{"y" * 3000}")]')
    assert content.endswith("more characters]") and len(content) < e.max_result_chars + 40


# -- BFCL -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bfcl_installed():
    pytest.importorskip("bfcl_eval", reason="needs the bfcl extra (see envs/bfcl/backend.py INSTALL_HINT)")


@PROPERTY
@given(st.lists(MODEL_OUTPUT, min_size=1, max_size=4), st.sampled_from(["multi_turn_base_0", "multi_turn_long_context_100", "multi_turn_miss_func_3", "multi_turn_miss_param_7"]))
def test_bfcl_turns_any_text_into_an_observation(bfcl_installed, tmp_path_factory, actions, task_id):
    cwd = tmp_path_factory.mktemp("cwd")
    with contextlib.chdir(cwd):
        e = bfcl.env(categories=task_id.rpartition("_")[0], max_turns=3)
        step_all(e, actions, lambda: e.reset(options={"task_id": task_id}))
        e.close()
    assert not os.listdir(cwd)


@pytest.mark.parametrize("category", ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"])
def test_bfcl_deep_nesting_is_an_error_observation(bfcl_installed, category):
    e = bfcl.env(categories=category)
    e.reset(options={"task_id": f"{category}_0"})
    e.step("[cd(folder=" + "-" * 330 + "1)]")
    assert e.messages[-1]["content"].startswith("Error: arguments must be literals")
    e.step("[cd(folder=" + "-" * 3990 + "1)]")
    assert e.messages[-1]["content"].startswith("Error: the call list does not parse")
    assert e.parse_errors == 2 and not any(e.truncations.values())
    e.close()


def test_a_backend_fault_ends_the_episode_as_env_error(bfcl_installed, monkeypatch):
    from envs.bfcl import backend

    def broken(*args, **kwargs):
        raise RuntimeError("backend down")

    monkeypatch.setattr(backend, "execute", broken)
    e = bfcl.env(categories="multi_turn_base")
    e.reset(options={"task_id": "multi_turn_base_0"})
    e.step("[ls()]")
    info = e.infos["turn_0"]
    assert e.truncations["turn_0"] and info["end_reason"] == "env_error"
    assert info["env_error"] == "RuntimeError: backend down" and e.rewards["turn_0"] == 0.0


def test_bfcl_observations_are_bounded(bfcl_installed):
    e = bfcl.env(categories="multi_turn_long_context", max_step_chars=16_000)
    e.reset(options={"task_id": "multi_turn_long_context_100"})
    flood = "[" + ", ".join(["get_transaction_history()"] * 60) + "]"
    sizes = [len(e.observe("turn_0"))]
    while e.agents and not any(e.truncations.values()):
        e.step(flood)
        sizes.append(len(e.observe(e.agent_selection)))
        assert sizes[-1] - sizes[-2] < 16_000 + 60 * 200 + 2 * len(flood)
        assert e.observation_space("turn_0").contains(e.observe(e.agent_selection))
    assert e.infos["turn_0"]["end_reason"] == "context_limit" and max(sizes) < 96_000 + 40_000
    results = [m for m in e.messages if m["role"] == "tool"]
    assert any(m["content"].endswith("more characters]") for m in results)
    e.reset(options={"task_id": "multi_turn_long_context_100"})
    e.step("[" + ", ".join(["get_transaction_history()"] * 65) + "]")
    assert e.messages[-1]["content"] == "Error: at most 64 calls per response, got 65"


def test_every_first_bfcl_observation_fits_the_declared_bound(bfcl_installed):
    from envs.bfcl import backend, prompts
    from envs.bfcl.bfcl import FIRST_OBSERVATION_CHARS
    from envs.text import encode_messages

    longest = max(
        len(encode_messages(prompts.first_messages(entry.entry["question"][0], list(entry.entry["function"]), entry.id, doc_format)))
        for category in backend.CATEGORIES
        for entry in backend.load_category(category).values()
        for doc_format in prompts.DOC_FORMATS
    )
    assert longest < FIRST_OBSERVATION_CHARS


# -- AppWorld (client side, against the protocol fake) -----------------------------------


@PROPERTY
@given(st.lists(st.one_of(MODEL_OUTPUT, MODEL_OUTPUT.map(lambda t: f"```python\n{t}\n```")), min_size=1, max_size=4))
def test_appworld_turns_any_text_into_an_observation(appworld_server, actions):
    from envs.appworld import env as appworld_env
    from fake_appworld import SPLITS

    e = appworld_env(server_urls=appworld_server.url, task_ids=SPLITS, max_turns=3, lock_servers=False)
    step_all(e, actions, lambda: e.reset(options={"task_id": "a1b2c3d_1"}))
    e.close()


@pytest.fixture(scope="module")
def appworld_server():
    from fake_appworld import FakeAppWorldServer

    with FakeAppWorldServer() as server:
        yield server


def test_a_malformed_evaluation_report_is_an_env_error(appworld_server, monkeypatch):
    from envs.appworld import env as appworld_env
    from envs.appworld.client import AppWorldClient
    from fake_appworld import SPLITS

    monkeypatch.setattr(AppWorldClient, "evaluate", lambda self, task_id: ["not", "a", "report"])
    e = appworld_env(server_urls=appworld_server.url, task_ids=SPLITS, max_turns=1, lock_servers=False)
    e.reset(options={"task_id": "a1b2c3d_1"})
    e.step("```python\nprint(1)\n```")
    info = e.infos["turn_0"]
    assert e.truncations["turn_0"] and info["env_error"].startswith("AttributeError")


# -- the LLM module ---------------------------------------------------------------------


def test_a_runaway_chat_is_too_long_without_being_tokenised(tiny_model, monkeypatch):
    import numpy as np
    from ray.rllib.core.columns import Columns

    from envs.text import AnyText, encode_messages
    from rllib_seeupo.llm.module import LLMRLModule
    from rllib_seeupo.turn_env import PROMPT_TOO_LONG

    module = LLMRLModule(
        observation_space=AnyText(10**9), action_space=AnyText(4000),
        model_config={"model": tiny_model, "max_prompt_tokens": 256, "max_new_tokens": 4},
    )
    runaway = encode_messages([{"role": "user", "content": "x" * 2_000_000}])
    monkeypatch.setattr(module.tokenizer, "apply_chat_template", lambda *a, **k: pytest.fail("tokenised a runaway chat"))
    out = module.forward_inference({Columns.OBS: np.array([runaway], dtype=object)})
    assert out[Columns.ACTIONS][0] == PROMPT_TOO_LONG


# -- the tuned examples -------------------------------------------------------------------


def test_tuned_examples_bound_their_observations():
    import yaml

    keys = {"bfcl": "max_context_chars", "appworld": "max_output_chars"}
    for path in Path(__file__).resolve().parents[1].glob("tuned_examples/*.yaml"):
        (spec,) = yaml.safe_load(path.read_text()).values()
        env = str(spec.get("env", "")).removeprefix("seeupo/")
        if env in keys:
            assert keys[env] in (spec.get("config", {}).get("env_config") or {}), path.name


def test_encoded_chat_stays_json():
    # Control characters and quotes survive the round trip an observation makes.
    e = _tool_env()
    e.step('\x00"\\' * 1000)
    assert json.loads(e.observe(e.agent_selection))[-2]["content"] == '\x00"\\' * 1000
