"""The AppWorld env against the REAL AppWorld environment server (appworld 0.1.3.post1's
FastAPI app, ``appworld/serve/environment.py``) on synthetic tasks written offline in
AppWorld's own data format by ``tests/appworld_synthetic_data.py``.

AppWorld lives in a venv of its own (it pins pydantic 1); the tests use
``$SEEUPO_APPWORLD_VENV`` (default ``/work/appworld-venv``) and are skipped without it::

    python3 -m venv /work/appworld-venv
    /work/appworld-venv/bin/pip install appworld==0.1.3.post1
    /work/appworld-venv/bin/appworld install

The server is the app that ``appworld serve environment`` runs, started under uvicorn on
127.0.0.1 (the CLI binds 0.0.0.0). Slow: building the data and the first ``/initialize``
take about a minute on a loaded 2-core machine.
"""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from envs.appworld import AppWorldClient, AppWorldError, env
from envs.text import decode_messages

pytestmark = pytest.mark.slow
VENV = Path(os.environ.get("SEEUPO_APPWORLD_VENV", "/work/appworld-venv"))
PYTHON = VENV / "bin" / "python"
BUILDER = Path(__file__).with_name("appworld_synthetic_data.py")


def _appworld_ready() -> str | None:
    """Why the real server cannot run here, or None."""
    if not PYTHON.exists():
        return f"no AppWorld venv at {VENV} (set SEEUPO_APPWORLD_VENV; see this file's docstring)"
    check = subprocess.run(
        [str(PYTHON), "-c", "import appworld, os; assert os.path.exists(os.path.join(os.path.dirname(appworld.__file__), 'apps', 'admin', 'models.py'))"],
        capture_output=True,
    )
    if check.returncode:
        return f"appworld is not installed (or `appworld install` was not run) in {VENV}"
    return None


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    reason = _appworld_ready()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("appworld_root")
    subprocess.run([str(PYTHON), str(BUILDER), str(root)], cwd=root, check=True, capture_output=True, timeout=600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [str(PYTHON), "-m", "uvicorn", "appworld.serve.environment:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, env={**os.environ, "APPWORLD_ROOT": str(root)}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=5) as response:
                    assert b"Welcome to AppWorld Server" in response.read()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"AppWorld server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"url": url, "root": str(root)}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _make(server, tmp_path, **config):
    return env(server_urls=server["url"], appworld_root=server["root"], max_turns=3, lock_dir=str(tmp_path / "locks"), **config)


def _play(e, responses, task_id):
    e.reset(options={"task_id": task_id})
    final = None
    for agent in e.agent_iter():
        obs, reward, terminated, truncated, info = e.last()
        if terminated or truncated:
            final = final or (reward, info, truncated, decode_messages(obs))
            e.step(None)
            continue
        e.step(responses.pop(0))
    return final


def test_a_scripted_policy_solves_a_real_appworld_task(real_server, tmp_path):
    e = _make(real_server, tmp_path)
    assert e.task_ids("train") == ["0a1b2c3_1"] and e.task_ids("test_normal") == ["0a1b2c3_2"]
    responses = [
        "```python\nprofile = apis.supervisor.show_profile()\nprint(profile)\n```",
        "```python\napis.supervisor.complete_task(answer=profile['email'])\n```",
    ]
    reward, info, truncated, chat = _play(e, responses, "0a1b2c3_1")
    assert chat[1]["content"] == (
        "My name is: Ada Lovelace. My personal email is ada@example.com and phone number is 5550101.\n"
        "Task: What is my email address as stored in the supervisor app?"
    )
    assert '"email": "ada@example.com"' in chat[3]["content"]  # the server's own print of the profile
    assert reward == 1.5 and not truncated
    assert info["success"] == 1.0 and info["passed_fraction"] == 1.0 and info["num_tests"] == 2
    assert info["num_turns"] == 2 and info["task_completed"] is True and info["parse_errors"] == 0


def test_a_wrong_answer_and_api_docs_on_the_real_server(real_server, tmp_path):
    e = _make(real_server, tmp_path)
    responses = [
        "```python\nprint(apis.api_docs.show_api_descriptions(app_name='supervisor'))\n```",
        "no code here",
        "```python\napis.supervisor.complete_task(answer='555')\n```",
    ]
    reward, info, truncated, chat = _play(e, responses, "0a1b2c3_2")
    assert "show_profile" in chat[3]["content"] and "complete_task" in chat[3]["content"]
    assert info["success"] == 0.0 and info["passed_fraction"] == 0.5 and reward == 0.25
    assert info["parse_errors"] == 1 and info["num_turns"] == 3 and not truncated


def test_real_server_error_shapes(real_server, tmp_path):
    client = AppWorldClient(real_server["url"])
    assert client.initialize("0a1b2c3_1")["supervisor"]["first_name"] == "Ada"
    assert client.execute("0a1b2c3_1", "1/0").startswith("Execution failed. Traceback:")
    assert client.execute("0a1b2c3_1", "import os\nos.system('true')").startswith("Execution failed. Traceback:")
    with pytest.raises(AppWorldError, match="HTTP 500: Internal Server Error"):
        client.execute("0a1b2c3_2", "print(1)")  # not the active task
    with pytest.raises(AppWorldError, match=r"HTTP 422: .*field required"):
        client.post("execute", task_id="0a1b2c3_1")
    client.close("0a1b2c3_1")
    # An unknown task ends its episode as truncated at the first step; the env goes on.
    e = _make(real_server, tmp_path)
    reward, info, truncated, _ = _play(e, ["```python\nprint(1)\n```"], "fffffff_9")
    assert truncated and reward == 0.0 and "HTTP 500" in info["env_error"]
