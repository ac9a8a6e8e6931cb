"""The AppWorld env over real HTTP on loopback, against a fake of AppWorld's server that
speaks its protocol: PettingZoo API, rewards and infos, the exact requests, splits, and
faults (no server, timeouts, 5xx, dropped connections, a restart mid-run)."""

import socket
import threading

import pytest
from pettingzoo.test import api_test

from envs.appworld import AppWorldServerUnreachable, env, extract_code, read_task_ids
from envs.appworld.client import AppWorldClient, AppWorldError, claim_server
from envs.text import decode_messages
from fake_appworld import SPLITS, FakeAppWorldServer, fake_servers, solution_response


@pytest.fixture
def server():
    with FakeAppWorldServer() as s:
        yield s


def make(server_or_urls, tmp_path=None, **config):
    urls = server_or_urls.url if isinstance(server_or_urls, FakeAppWorldServer) else server_or_urls
    config = {"task_ids": SPLITS, "max_turns": 4, "retry_backoff_s": 0.05, **config}
    if tmp_path is not None:
        config["lock_dir"] = str(tmp_path / "locks")
    return env(server_urls=urls, **config)


def play(e, policy, task_id):
    """One episode; returns (reward, final info) of turn_0."""
    e.reset(options={"task_id": task_id})
    final = None
    for agent in e.agent_iter():
        obs, reward, terminated, truncated, info = e.last()
        if terminated or truncated:
            final = final or (reward, info, truncated)
            e.step(None)
            continue
        e.step(policy(decode_messages(obs)))
    return final


def test_pettingzoo_api(server, tmp_path):
    e = make(server, tmp_path)
    api_test(e, num_cycles=10)
    e.close()


@pytest.mark.parametrize("task_id", ["a1b2c3d_1", "a1b2c3d_2", "b2c3d4e_1"])
def test_scripted_solution_gets_the_success_reward_and_infos(server, tmp_path, task_id):
    e = make(server, tmp_path)
    reward, info, truncated = play(e, solution_response, task_id)
    assert reward == 1.5 and not truncated
    assert info["success"] == 1.0 and info["passed_fraction"] == 1.0
    assert info["num_turns"] == 2 and info["parse_errors"] == 0 and info["task_completed"] is True
    assert info["task_id"] == task_id and "env_error" not in info
    # The task was closed on the server once evaluated.
    assert [r[0] for r in server.requests][-2:] == ["evaluate", "close"]


@pytest.mark.parametrize("task_id, fraction", [("a1b2c3d_1", 1 / 2), ("a1b2c3d_2", 1 / 2), ("b2c3d4e_1", 1 / 3)])
def test_a_wrong_completion_gets_half_the_passed_fraction(server, tmp_path, task_id, fraction):
    e = make(server, tmp_path)
    reward, info, _ = play(e, lambda m: solution_response(m, choice=1), task_id)
    assert info["success"] == 0.0 and info["passed_fraction"] == pytest.approx(fraction)
    assert reward == pytest.approx(0.5 * fraction) and info["num_turns"] == 1
    e = make(server, tmp_path, success_reward=1.0, partial_reward_scale=0.0)
    reward, _, _ = play(e, lambda m: solution_response(m, choice=1), task_id)
    assert reward == 0.0


def test_prompt_follows_appworld_conventions(server, tmp_path):
    e = make(server, tmp_path)
    e.reset(options={"task_id": "a1b2c3d_1"})
    system, user = decode_messages(e.observe("turn_0"))
    assert system["role"] == "system" and user["role"] == "user"
    for api in ("apis.api_docs.show_app_descriptions()", "show_api_descriptions(app_name=", "show_api_doc(app_name=",
                "apis.supervisor.complete_task(", "simple_note", "spotify"):
        assert api in system["content"], api
    assert user["content"] == (
        "My name is: Ada Lovelace. My personal email is ada@example.com and phone number is 5550101.\n"
        "Task: How many of my SimpleNote notes are recipes?"
    )
    e.step("```python\nprint(len(apis.simple_note.search_notes(query='recipe')))\n```")
    chat = decode_messages(e.observe("turn_1"))
    assert chat[-1] == {"role": "user", "content": "2\n"}


def test_requests_match_the_server_protocol(server, tmp_path):
    e = make(server, tmp_path, initialize_settings={"max_interactions": 50, "random_seed": 7})
    play(e, solution_response, "a1b2c3d_2")
    endpoints = [name for name, _ in server.requests]
    assert endpoints == ["initialize", "execute", "task_completed", "execute", "task_completed", "evaluate", "close"]
    bodies = dict(server.requests)
    assert bodies["initialize"] == {"task_id": "a1b2c3d_2", "experiment_name": "rllib_seeupo", "max_interactions": 50, "random_seed": 7}
    assert set(bodies["execute"]) == {"task_id", "code"} and bodies["execute"]["code"].startswith("apis.simple_note.create_note")
    assert bodies["evaluate"] == {"task_id": "a1b2c3d_2", "suppress_errors": True}
    assert bodies["close"] == bodies["task_completed"] == {"task_id": "a1b2c3d_2"}


def test_client_reports_the_server_error_shapes(server):
    client = AppWorldClient(server.url)
    with pytest.raises(AppWorldError, match="HTTP 500: Internal Server Error"):
        client.execute("nope_1", "print(1)")  # no task initialised
    client.initialize("a1b2c3d_1")
    with pytest.raises(AppWorldError, match="HTTP 500"):
        client.execute("a1b2c3d_2", "print(1)")  # another task than the active one
    with pytest.raises(AppWorldError, match=r"HTTP 422: .*\"loc\":\[\"body\",\"code\"\].*field required"):
        client.post("execute", task_id="a1b2c3d_1")
    assert client.execute("a1b2c3d_1", "1/0").startswith("Execution failed. Traceback:")
    assert client.execute("a1b2c3d_1", "x = 1") == "Execution successful."
    # Without suppress_errors a failing test is a bare 500; the client always suppresses.
    with pytest.raises(AppWorldError, match="HTTP 500"):
        client.post("evaluate", task_id="a1b2c3d_1")
    assert client.evaluate("a1b2c3d_1")["success"] is False


def test_no_code_block_is_a_parse_error_and_nothing_is_executed(server, tmp_path):
    e = make(server, tmp_path, max_turns=2, parse_error_penalty=0.1)
    reward, info, truncated = play(e, lambda m: "I would search the notes.", "a1b2c3d_1")
    assert info["parse_errors"] == 2 and info["num_turns"] == 2 and not truncated
    assert reward == pytest.approx(0.5 * 0.5 - 0.2)  # evaluated at the turn limit: 1 of 2 tests pass
    assert "execute" not in [name for name, _ in server.requests]
    e.reset(options={"task_id": "a1b2c3d_1"})
    e.step("no code")
    assert "No code block found" in decode_messages(e.observe("turn_1"))[-1]["content"]


def test_turn_limit_evaluates_the_state_without_completion(server, tmp_path):
    e = make(server, tmp_path, max_turns=1)
    reward, info, _ = play(e, lambda m: "```python\napis.simple_note.create_note(title='groceries', content='milk, eggs')\n```", "a1b2c3d_2")
    assert info["task_completed"] is False and info["num_turns"] == 1
    assert info["success"] == 1.0 and reward == 1.5


def test_long_output_is_cut_in_the_observation(server, tmp_path):
    e = make(server, tmp_path, max_output_chars=50)
    e.reset(options={"task_id": "a1b2c3d_1"})
    e.step("```python\nprint('x' * 500)\n```")
    content = decode_messages(e.observe("turn_1"))[-1]["content"]
    assert content.startswith("x" * 50) and "[cut: 451 more characters]" in content


@pytest.mark.parametrize(
    "text, code",
    [
        ("```python\nprint(1)\n```", "print(1)"),
        ("Thought.\n```py\nx = 1\nprint(x)\n```\nmore\n```python\nprint(2)\n```", "x = 1\nprint(x)"),
        ("```\nprint(3)\n```", "print(3)"),
        ("```python\nprint(4)", "print(4)"),  # cut off before the closing fence
        ("print(5)", None),
        ("```python\n\n```", None),
        ("", None),
    ],
)
def test_extract_code(text, code):
    assert extract_code(text) == code


def test_task_ids_from_config_or_data_folder(tmp_path, monkeypatch):
    datasets = tmp_path / "data" / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "train.txt").write_text("50e1ac9_1\n\n50e1ac9_2:tagged\n")
    e = env(appworld_root=str(tmp_path))
    assert e.task_ids("train") == ["50e1ac9_1", "50e1ac9_2"]
    with pytest.raises(FileNotFoundError, match="appworld download data"):
        e.task_ids("dev")
    with pytest.raises(ValueError, match="test_normal"):
        e.task_ids("test")
    monkeypatch.setenv("APPWORLD_ROOT", str(tmp_path))
    assert env().task_ids("train") == read_task_ids(str(tmp_path), "train")
    monkeypatch.delenv("APPWORLD_ROOT")
    assert env(task_ids=["x_1", "y_2"]).task_ids("train") == ["x_1", "y_2"]
    with pytest.raises(ValueError, match="no task ids"):
        env().task_ids("train")
    with pytest.raises(ValueError, match="splits must be within"):
        env(task_ids={"validation": ["x_1"]})


# -- faults -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_is_a_clear_error_naming_url_and_command(tmp_path):
    port = _free_port()
    e = make(f"http://127.0.0.1:{port}", tmp_path, max_retries=1)
    with pytest.raises(AppWorldServerUnreachable) as raised:
        e.reset(options={"task_id": "a1b2c3d_1"})
    message = str(raised.value)
    assert f"http://127.0.0.1:{port}" in message and f"appworld serve environment --port {port}" in message


def test_a_timeout_truncates_that_episode_and_the_next_one_runs(server, tmp_path):
    e = make(server, tmp_path, request_timeout_s=2.0)
    stuck = threading.Event()
    server.faults.append(("execute", "block", stuck))
    reward, info, truncated = play(e, solution_response, "a1b2c3d_1")
    assert truncated and reward == 0.0 and info["num_turns"] == 1
    assert "timed out" in info["env_error"] and info["success"] == 0.0
    stuck.set()  # the server finishes the slow request (it serves one at a time)
    reward, info, truncated = play(e, solution_response, "a1b2c3d_2")
    assert reward == 1.5 and not truncated


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_truncates_that_episode_and_the_next_one_runs(server, tmp_path, status):
    e = make(server, tmp_path)
    server.faults.append(("task_completed", "status", status))
    reward, info, truncated = play(e, solution_response, "a1b2c3d_1")
    assert truncated and reward == 0.0 and f"HTTP {status}" in info["env_error"]
    assert play(e, solution_response, "a1b2c3d_1")[0] == 1.5


def test_an_unknown_task_ends_at_its_first_step_as_truncated(server, tmp_path):
    e = make(server, tmp_path)
    e.reset(options={"task_id": "ffffff0_9"})
    assert "HTTP 500" in e.infos["turn_0"]["env_error"]
    reward, info, truncated = play(e, solution_response, "ffffff0_9")
    assert truncated and reward == 0.0 and info["num_turns"] == 1


def test_dropped_connections_are_retried_with_backoff(server, tmp_path):
    e = make(server, tmp_path, max_retries=3)
    server.faults += [("initialize", "drop", None), ("initialize", "drop", None), ("execute", "drop", None)]
    reward, _, truncated = play(e, solution_response, "a1b2c3d_1")
    assert reward == 1.5 and not truncated and not server.faults
    # More drops than retries: the server counts as unreachable.
    server.faults += [("initialize", "drop", None)] * 4
    with pytest.raises(AppWorldServerUnreachable, match="4 attempts"):
        e.reset(options={"task_id": "a1b2c3d_1"})


def test_a_server_restart_mid_run_loses_no_finished_episode(tmp_path):
    """Episodes through the RLlib wrapper and the evaluation loop; the server restarts (on
    the same port, empty) while the second episode is half done."""
    from rllib_seeupo.evaluation import evaluate

    holder = {"server": FakeAppWorldServer().start()}
    port = holder["server"].port
    calls = {"n": 0}

    def restart():
        holder["server"] = FakeAppWorldServer(port=port).start()

    def policy(observations, sample):
        calls["n"] += 1
        if calls["n"] == 4:  # episode 2 has played one turn
            holder["server"].stop()
            threading.Timer(0.2, restart).start()  # down for a moment: the retries wait
        return [solution_response(decode_messages(o)) for o in observations]

    config = {"server_urls": holder["server"].url, "task_ids": SPLITS, "max_turns": 3, "retry_backoff_s": 0.2,
              "lock_dir": str(tmp_path / "locks")}
    try:
        result = evaluate(policy, "appworld", config, ["a1b2c3d_1", "a1b2c3d_2", "a1b2c3d_1"], batch_size=1)
    finally:
        holder["server"].stop()
    assert result["num_episodes"] == 3
    assert result["truncation_rate"] == pytest.approx(1 / 3)  # only the episode in flight
    assert result["success_rate"] == pytest.approx(2 / 3)  # TGC
    assert 2 / 3 - 1e-9 <= result["passed_fraction_mean"] <= 1.0  # the eval CLI's second AppWorld figure


def test_each_live_episode_holds_its_own_server(tmp_path):
    locks = str(tmp_path / "locks")
    with fake_servers(2) as (a, b):
        first, second, third = (make([a.url, b.url], tmp_path) for _ in range(3))
        for e in (first, second):
            e.reset(options={"task_id": "a1b2c3d_1"})
        assert {first.client.url, second.client.url} == {a.url, b.url}
        with pytest.raises(AppWorldError, match="one server per"):
            third.reset(options={"task_id": "a1b2c3d_1"})
        # An episode that ends gives its server back.
        freed = first.client.url
        first.step("```python\napis.supervisor.complete_task(answer=2)\n```")
        assert first.terminations["turn_0"] and first.client is None
        third.reset(options={"task_id": "a1b2c3d_2"})
        assert third.client.url == freed
        # So does close().
        held_by_second = second.client.url
        second.close()
        url, handle = claim_server([a.url, b.url], locks)
        assert url == held_by_second
        handle.close()


def test_an_episode_cut_short_by_the_rllib_wrapper_gives_its_server_back(server, tmp_path):
    """A prompt too long for the model truncates the episode in ``TurnAgentEnv`` without an
    env step: the env is closed there, so the one server is free for the next episode."""
    from rllib_seeupo.turn_env import PROMPT_TOO_LONG, TurnAgentEnv

    first, second = (TurnAgentEnv(make(server, tmp_path)) for _ in range(2))
    first.reset(options={"task_id": "a1b2c3d_1"})
    with pytest.raises(AppWorldError, match="one server per"):
        second.reset(options={"task_id": "a1b2c3d_2"})
    _, _, _, truncated, infos = first.step({"turn_0": PROMPT_TOO_LONG})
    assert truncated["__all__"] and infos["turn_0"]["prompt_too_long"]
    observations, _ = second.reset(options={"task_id": "a1b2c3d_2"})
    assert list(observations) == ["turn_0"]
    # The closed env starts its next episode as usual.
    second.close()
    assert list(first.reset(options={"task_id": "a1b2c3d_1"})[0]) == ["turn_0"]
