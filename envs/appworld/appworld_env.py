"""AppWorld (Trivedi et al., ACL 2024) through its own environment server, over HTTP.

An episode is one AppWorld task. At every turn the model writes Python code in a fenced
block; the env sends it to the server's ``/execute`` and the output (or traceback) is the
next observation. The episode ends when the task is completed
(``apis.supervisor.complete_task(...)``, seen through ``/task_completed``), at the turn
limit, or when the server fails. At the end the server's unit tests (``/evaluate``) give
the reward, by default as in SeeUPO's release: 1.5 if every test passes, else
0.5 x the passed fraction. Turn k of an episode is agent ``turn_k``.

The env never imports ``appworld`` (its pydantic 1 pin conflicts with this stack): run
``appworld serve environment --port N`` in a venv of its own, one server per env that runs
in parallel, and list their URLs in ``server_urls``.
"""

from __future__ import annotations

import os
import re
from typing import IO, Any

import gymnasium
import numpy as np
from pettingzoo import AECEnv

from envs.appworld.client import AppWorldClient, AppWorldError, AppWorldServerUnreachable, claim_server
from envs.text import MAX_MARKER_CHARS, AnyText, TextObservation, as_text, chat_bound, cut_text, encode_messages
from envs.turns import end_episode, render_chat, start_episode

SPLITS = ("train", "dev", "test_normal", "test_challenge")
# The apps of appworld 0.1.3.post1 (every task may use all of them; admin is internal).
APPS = ("api_docs", "supervisor", "amazon", "phone", "file_system", "spotify", "venmo", "gmail",
        "splitwise", "simple_note", "todoist")

SYSTEM_PROMPT = """I am your supervisor and you are a super intelligent AI assistant whose job is to achieve my day-to-day tasks completely autonomously.

To do this, you interact with apps (e.g. spotify, venmo) through their APIs on my behalf, in a multi-step conversation with a Python REPL: you write Python code, the environment executes it and shows you the output, and from that you write the code of the next step, until the task is done. The REPL holds an `apis` object with one attribute per app.{apps}

Three APIs tell you everything else:

# The apps available to you.
print(apis.api_docs.show_app_descriptions())
# The APIs of one app, e.g. spotify.
print(apis.api_docs.show_api_descriptions(app_name='spotify'))
# The specification of one API, e.g. spotify's login.
print(apis.api_docs.show_api_doc(app_name='spotify', api_name='login'))

Key instructions:
1. Write exactly one block of Python code per step, as ```python
<code>
```; it is executed and its output is shown to you.
2. Variables persist from one step to the next.
3. Use the "supervisor" app for my accounts, passwords, addresses and payment cards, and the "phone" app for friends and family.
4. Read an API's specification (apis.api_docs.show_api_doc) before calling it.
5. Write small chunks of code and make sure everything works before any irreversible change.
6. Many APIs return results in pages: go through all of them with page_index.
7. When the task is done, call apis.supervisor.complete_task(). If the task asks for information, pass it as the answer, e.g. apis.supervisor.complete_task(answer=10): just the entity or the number, not a sentence."""

TASK_PROMPT = (
    "My name is: {first_name} {last_name}. My personal email is {email} and phone number is {phone_number}.\n"
    "Task: {instruction}"
)
MAX_REQUEST_CHARS = 10_000  # the task's first user message (the server's instruction) is cut here
NO_CODE = "No code block found. Write the next step as Python code in a ```python ... ``` block."
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str | None:
    """The code of the first fenced block of ``text`` (a block cut off before its closing
    fence counts: generation may stop there), or None when there is none."""
    match = _FENCE.search(text)
    if match is None or not match.group(1).strip():
        return None
    return match.group(1).strip("\n")


def system_prompt(allowed_apps: tuple[str, ...] | None = APPS) -> str:
    apps = f"\nThe apps: {', '.join(allowed_apps)}." if allowed_apps else ""
    return SYSTEM_PROMPT.format(apps=apps)


def read_task_ids(root: str, split: str) -> list[str]:
    """Task ids of ``split`` from ``<root>/data/datasets/<split>.txt`` (one id a line; a
    ``:tag`` suffix is dropped, as AppWorld's ``load_task_ids`` does)."""
    path = os.path.join(root, "data", "datasets", f"{split}.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"AppWorld split file {path} does not exist: run `appworld download data` under {root} "
            "(or set appworld_root / APPWORLD_ROOT to the folder that holds data/)"
        )
    with open(path) as f:
        return [line.strip().split(":")[0] for line in f if line.strip()]


class raw_env(AECEnv):
    """PettingZoo AEC env: agent ``turn_k`` writes the k-th piece of code of an AppWorld task.

    Observations are the chat so far (a JSON list of ``{"role", "content"}``: the system
    prompt, the task, then each turn's code and the execution output as a user message),
    actions the model's text. ``reset(options={"task_id": "50e1ac9_1"})`` pins the task.
    ``infos[agent]`` holds ``task_id`` and, once the episode is over, ``success`` (1.0 when
    every unit test passes: AppWorld's task goal completion), ``passed_fraction``,
    ``num_tests``, ``task_completed``, ``parse_errors`` (turns with no code block) and
    ``num_turns``; an episode cut short by a server failure is truncated and has
    ``env_error``.

    Args:
        server_urls: one URL or a list; at reset an env claims the first one that no other
            env on this machine holds (a file lock) and gives it back when the episode ends,
            so list one server per episode that runs at the same time.
        max_turns: the turn limit T.
        task_ids: ``{split: [ids]}`` (or one list: the train split); else the split files
            under ``appworld_root`` (default: the ``APPWORLD_ROOT`` environment variable).
        success_reward, partial_reward_scale: reward ``success_reward`` if every test passes,
            else ``partial_reward_scale`` x the passed fraction.
        parse_error_penalty: subtracted per turn without a code block.
        initialize_settings: extra AppWorld settings sent to ``/initialize`` (e.g.
            ``max_interactions``, ``timeout_seconds``, ``random_seed``).
        request_timeout_s, max_retries, retry_backoff_s: HTTP behaviour (see AppWorldClient).
        max_output_chars: execution output longer than this is cut in the observation.
        allowed_apps: app names listed in the system prompt (None: not listed).
        lock_servers: claim servers with file locks (False: always the first URL).
    """

    metadata = {"name": "seeupo_appworld_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(
        self,
        server_urls: str | list[str] = "http://127.0.0.1:9000",
        max_turns: int = 10,
        task_ids: dict[str, list[str]] | list[str] | None = None,
        appworld_root: str | None = None,
        experiment_name: str = "rllib_seeupo",
        success_reward: float = 1.5,
        partial_reward_scale: float = 0.5,
        parse_error_penalty: float = 0.0,
        initialize_settings: dict[str, Any] | None = None,
        request_timeout_s: float = 120.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.5,
        max_action_chars: int = 8000,
        max_output_chars: int = 4000,
        allowed_apps: tuple[str, ...] | list[str] | None = APPS,
        lock_servers: bool = True,
        lock_dir: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__()
        if max_turns < 1:
            raise ValueError(f"appworld max_turns must be >= 1, got {max_turns}")
        urls = [server_urls] if isinstance(server_urls, str) else list(server_urls)
        if not urls:
            raise ValueError("appworld server_urls is empty: give at least one AppWorld server URL")
        if isinstance(task_ids, (list, tuple)):
            task_ids = {"train": list(task_ids)}
        if task_ids is not None and not set(task_ids) <= set(SPLITS):
            raise ValueError(f"appworld task_ids splits must be within {SPLITS}, got {sorted(task_ids)}")
        self.server_urls = urls
        self.max_turns = max_turns
        self._task_ids = {k: [str(t) for t in v] for k, v in (task_ids or {}).items()}
        self.appworld_root = appworld_root or os.environ.get("APPWORLD_ROOT")
        self.experiment_name = experiment_name
        self.success_reward = success_reward
        self.partial_reward_scale = partial_reward_scale
        self.parse_error_penalty = parse_error_penalty
        self.initialize_settings = dict(initialize_settings or {})
        self._client_settings = {"timeout_s": request_timeout_s, "max_retries": max_retries, "retry_backoff_s": retry_backoff_s}
        self.max_output_chars = max_output_chars
        self.allowed_apps = tuple(allowed_apps) if allowed_apps else None
        self.lock_servers = lock_servers
        self.lock_dir = lock_dir
        self.render_mode = render_mode
        self.possible_agents = [f"turn_{k}" for k in range(max_turns)]
        self._action_space = AnyText(max_action_chars)
        # The chat grows by one action and one (cut) output per turn.
        self._observation_space = AnyText(
            chat_bound(len(system_prompt(self.allowed_apps)) + MAX_REQUEST_CHARS, max_turns,
                       max_action_chars + max(len(NO_CODE), max_output_chars + MAX_MARKER_CHARS))
        )
        self._rng = np.random.default_rng()
        self.client: AppWorldClient | None = None
        self._lock: IO | None = None
        self._active_task: str | None = None  # initialised on the server, not closed yet
        self.task_id: str | None = None

    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._observation_space

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._action_space

    def task_ids(self, split: str = "train") -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"appworld has splits {list(SPLITS)}, got {split!r}")
        if split in self._task_ids:
            return self._task_ids[split]
        if self.appworld_root:
            self._task_ids[split] = read_task_ids(self.appworld_root, split)
            return self._task_ids[split]
        raise ValueError(
            f"appworld has no task ids for split {split!r}: set task_ids in the env config, or "
            "appworld_root (or APPWORLD_ROOT) to a folder with data/datasets/<split>.txt"
        )

    # -- server ---------------------------------------------------------------------------

    def _connect(self) -> AppWorldClient:
        if self.client is None:
            if self.lock_servers:
                url, self._lock = claim_server(self.server_urls, self.lock_dir)
            else:
                url = self.server_urls[0]
            self.client = AppWorldClient(url, **self._client_settings)
        return self.client

    def _close_active_task(self) -> None:
        if self._active_task is not None and self.client is not None:
            task, self._active_task = self._active_task, None
            try:
                self.client.close(task)
            except AppWorldError:
                pass  # a restarted or busy server: nothing left to free, or it frees it later

    def _release_server(self) -> None:
        """Give the server back: an env holds one only while an episode is live, so envs
        that take turns (training, then in-process evaluation) can share servers."""
        self._active_task = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self.client = None

    # -- PettingZoo API -------------------------------------------------------------------

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task_id = (options or {}).get("task_id")
        if task_id is None:
            train = self.task_ids("train")
            task_id = train[int(self._rng.integers(len(train)))]
        self.task_id = str(task_id)
        client = self._connect()
        self._close_active_task()
        self.error: str | None = None
        try:
            task = client.initialize(self.task_id, experiment_name=self.experiment_name, **self.initialize_settings)
            self._active_task = self.task_id
            supervisor = task["supervisor"]
            request = cut_text(TASK_PROMPT.format(instruction=task["instruction"], **supervisor), MAX_REQUEST_CHARS)
        except AppWorldServerUnreachable:
            self._release_server()
            raise  # no server at all: a setup error, not one bad episode
        except (AppWorldError, KeyError, TypeError) as error:
            # A failed start (e.g. an unknown task id) ends the episode at its first step.
            self.error = f"{type(error).__name__}: {error}"
            request = f"The task {self.task_id} could not be started."
        self.messages = [
            {"role": "system", "content": system_prompt(self.allowed_apps)},
            {"role": "user", "content": request},
        ]
        self.parse_errors = 0
        start_episode(self, {"task_id": self.task_id})
        if self.error:
            self.infos[self.agents[0]]["env_error"] = self.error

    def observe(self, agent: str) -> TextObservation:
        return TextObservation(encode_messages(self.messages))

    def step(self, action: str | None) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        turn = self.possible_agents.index(agent)
        text = as_text(action)[: self._action_space.max_length]
        self.messages.append({"role": "assistant", "content": text})
        self._cumulative_rewards[agent] = 0.0
        self.rewards = {a: 0.0 for a in self.agents}
        if self.error:
            self._end(turn, None, truncated=True)
            self._accumulate_rewards()
            return
        code = extract_code(text)
        completed = False
        try:
            if code is None:
                self.parse_errors += 1
                output = NO_CODE
            else:
                output = self.client.execute(self.task_id, code)
                completed = self.client.task_completed(self.task_id)
            self.messages.append({"role": "user", "content": cut_text(str(output), self.max_output_chars)})
            report = self.client.evaluate(self.task_id) if completed or turn == self.max_turns - 1 else None
            score = None if report is None else _score(report)
        except Exception as error:  # a failing or misbehaving server ends this episode, never the run
            self.error = f"{type(error).__name__}: {error}"
            self._end(turn, None, truncated=True)
        else:
            if score is None:
                self.agent_selection = self._agent_selector.next()
            else:
                self._end(turn, score, truncated=False, completed=completed)
        self._accumulate_rewards()

    def _end(self, last_turn: int, score: dict[str, Any] | None, *, truncated: bool, completed: bool = False) -> None:
        """Close the episode after ``last_turn``: the reward from the evaluation's ``score``
        (see ``_score``; None: the server failed, reward 0) goes to every turn that acted."""
        summary: dict[str, Any] = {"parse_errors": self.parse_errors, "num_turns": last_turn + 1}
        if score is None:
            reward = 0.0
            summary.update(success=0.0, passed_fraction=0.0, task_completed=completed, env_error=self.error)
        else:
            reward = self.success_reward if score["success"] else self.partial_reward_scale * score["passed_fraction"]
            reward -= self.parse_error_penalty * self.parse_errors
            summary.update(score, task_completed=completed)
            self._close_active_task()
        self._release_server()
        end_episode(self, last_turn, reward, summary, truncated=truncated)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return render_chat(self.messages)
        return None

    def close(self) -> None:
        self._close_active_task()
        self._release_server()


def _score(report: dict[str, Any]) -> dict[str, Any]:
    """``success`` (1.0 when every unit test passes), ``passed_fraction``, ``num_tests`` and
    ``difficulty`` of an ``/evaluate`` report; a report of another shape raises."""
    num_tests = int(report.get("num_tests", 0))
    passed = len(report.get("passes", []))
    success = bool(report.get("success"))
    fraction = passed / num_tests if num_tests else float(success)
    return {"success": float(success), "passed_fraction": fraction, "num_tests": num_tests,
            "difficulty": report.get("difficulty")}


def env(**config: Any) -> raw_env:
    return raw_env(**config)
