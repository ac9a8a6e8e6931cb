"""Glue between PettingZoo turn-as-agent envs and RLlib.

``register_turn_env(name, env_fn)`` makes an env usable as ``seeupo/<name>`` everywhere
(RLlib, Tune, the command line, held-out evaluation); the built-in envs are registered
through it. ``TurnAgentEnv`` is RLlib's ``PettingZooEnv`` plus two things SeeUPO needs: the
reset infos (which carry ``task_id``) and a task queue, so that the algorithm can roll out
each task ``group_size`` times. The protocol an env follows: docs/design.md section 4.1.
"""

from __future__ import annotations

import collections
import importlib
from typing import Any, Callable

from ray.rllib.env.wrappers.pettingzoo_env import PettingZooEnv
from ray.tune.registry import register_env

SHARED_MODULE_ID = "shared_policy"
# The action a policy returns for a turn whose prompt no longer fits its context window:
# the episode then ends as truncated (never cut in the middle of a message).
PROMPT_TOO_LONG = "\x00<prompt-too-long>"
# The built-in envs: packages under `envs/`, each registered as `seeupo/<name>`.
BUILTIN_ENVS = ("bandit", "tool_tasks", "appworld", "bfcl")
# name -> env_fn of every registered turn env (this process's registrations).
TURN_ENVS: dict[str, Callable[..., Any] | str] = {}


def shared_module_mapping(agent_id: str, episode: Any = None, **kwargs) -> str:
    """Every ``turn_k`` agent is served by the one shared module."""
    return SHARED_MODULE_ID


def turn_index(agent_id: str) -> int:
    """``"turn_3"`` -> 3."""
    prefix, _, index = agent_id.rpartition("_")
    if prefix != "turn" or not index.isdigit():
        raise ValueError(f"agent ids must look like 'turn_<k>', got {agent_id!r}")
    return int(index)


class TurnAgentEnv(PettingZooEnv):
    """An AEC env whose agents ``turn_0..turn_{T-1}`` are the turns of an episode.

    Adds to ``PettingZooEnv``:
    - ``task_queue``: a deque (shared by the sub-envs of one env runner) of the tasks of the
      next episodes. Once a queue is set and empty, a reset *parks* the sub-env: it has no
      agent to act and never ends, so a vectorised runner generates nothing for it.
    - the reset infos (with ``task_id``).
    - a failing env step, or a ``PROMPT_TOO_LONG`` action, ends that episode as truncated
      (the error goes into the infos) instead of ending the run; the env is closed then, and
      when parked, so an unfinished episode holds no server or cache. Envs must accept
      ``reset`` after ``close``.
    """

    def __init__(self, aec_env):
        super().__init__(aec_env)
        # PettingZooEnv resets the env once to read its spaces: hold nothing from that.
        self._release()
        self.task_queue: collections.deque | None = None
        self._parked = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = dict(options or {})
        if "task_id" not in options and self.task_queue is not None:
            if not self.task_queue:
                self._parked = True
                self._release()
                return {}, {}
            options["task_id"] = self.task_queue.popleft()
        self._parked = False
        self.env.reset(seed=seed, options=options)
        agent = self.env.agent_selection
        return {agent: self.env.observe(agent)}, {agent: dict(self.env.infos.get(agent, {}))}

    def step(self, action):
        if self._parked:
            return {}, {}, {"__all__": False}, {"__all__": False}, {}
        acting = self.env.agent_selection
        if isinstance(action.get(acting), str) and action[acting] == PROMPT_TOO_LONG:
            return self._truncate({"prompt_too_long": True})
        try:
            return super().step(action)
        except Exception as error:  # a broken step ends this episode, not the run
            return self._truncate({"env_error": f"{type(error).__name__}: {error}"})

    def _truncate(self, info: dict):
        agents = list(self.env.agents)
        obs, rewards, infos = {}, {}, {}
        for agent in agents:
            try:
                obs[agent] = self.env.observe(agent)
            except Exception:
                obs[agent] = self.observation_spaces[agent].sample()
            rewards[agent] = 0.0
            infos[agent] = {**dict(self.env.infos.get(agent, {})), **info}
        terminated = {a: False for a in agents} | {"__all__": False}
        truncated = {a: True for a in agents} | {"__all__": True}
        self._release()
        return obs, rewards, terminated, truncated, infos

    def _release(self) -> None:
        """Free what the unfinished episode holds (an AppWorld server, BFCL's cached
        backends): it will not be stepped again before the next reset."""
        try:
            self.env.close()
        except Exception:  # releasing is best effort; the next reset starts afresh
            pass

    def task_ids(self, split: str = "train"):
        """The env's task ids for ``split`` (a sequence; may be a ``range``)."""
        return self.env.unwrapped.task_ids(split)


def final_info(episode) -> dict[str, Any]:
    """The infos of a finished ``MultiAgentEpisode``'s last step, merged over its turn
    agents (the env's outcome: ``success``, ``parse_errors``, ...)."""
    info: dict[str, Any] = {}
    for agent_episode in episode.agent_episodes.values():
        if len(agent_episode):
            info.update(agent_episode.get_infos(-1))
    return info


def register_turn_env(name: str, env_fn: Callable[..., Any] | str) -> str:
    """Register a turn-as-agent env as ``seeupo/<name>``: RLlib and Tune build it by that
    name (``config.environment("seeupo/<name>", env_config={...})``), in Ray's workers too,
    and held-out evaluation and the config checks (``experiment.check_env``) of this process
    accept it. The built-in names cannot be taken.

    Args:
        name: the env's name, without the ``seeupo/`` prefix.
        env_fn: ``env_fn(**env_config)`` returns the PettingZoo AEC env (see the protocol in
            docs/design.md section 4.1), or its import path ``"package.module:function"``,
            imported when the env is first built (an env's heavy imports cost nothing
            until it is used).
    Returns:
        The registered name, ``seeupo/<name>``.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"register_turn_env: name must be a non-empty string without '/', got {name!r}")
    if name in BUILTIN_ENVS and env_fn != f"envs.{name}:env":
        raise ValueError(f"register_turn_env: {name!r} is a built-in env's name; choose another")
    if not (callable(env_fn) or (isinstance(env_fn, str) and ":" in env_fn)):
        raise TypeError(f"register_turn_env: env_fn must be a callable or a 'module:function' path, got {env_fn!r}")
    TURN_ENVS[name] = env_fn
    register_env(f"seeupo/{name}", lambda cfg, _fn=env_fn: TurnAgentEnv(resolve_env_fn(_fn)(**dict(cfg or {}))))
    return f"seeupo/{name}"


def resolve_env_fn(env_fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """The env function itself (an import path is imported)."""
    if callable(env_fn):
        return env_fn
    module, _, attr = env_fn.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_turn_env(name: str, env_config: dict | None = None) -> TurnAgentEnv:
    """Build the turn env registered as ``seeupo/<name>`` with ``env_config``, wrapped for
    RLlib (in a process that did not register it, e.g. a Tune trial, through Tune's registry)."""
    if name in TURN_ENVS:
        return TurnAgentEnv(resolve_env_fn(TURN_ENVS[name])(**dict(env_config or {})))
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if _global_registry.contains(ENV_CREATOR, f"seeupo/{name}"):
        return _global_registry.get(ENV_CREATOR, f"seeupo/{name}")(dict(env_config or {}))
    raise ValueError(f"unknown env 'seeupo/{name}'; registered: {', '.join(f'seeupo/{n}' for n in TURN_ENVS)}")


def register_envs() -> None:
    """Register the built-in envs (``envs.<name>.env``)."""
    for name in BUILTIN_ENVS:
        register_turn_env(name, f"envs.{name}:env")
