"""Glue between our PettingZoo turn-as-agent envs and RLlib.

``TurnAgentEnv`` is RLlib's ``PettingZooEnv`` plus two things SeeUPO needs: the reset infos
(which carry ``task_id``) and a task queue, so that the algorithm can roll out each task
``group_size`` times. Every env is registered under ``seeupo/<name>``.
"""

from __future__ import annotations

import collections
import importlib
from typing import Any

from ray.rllib.env.wrappers.pettingzoo_env import PettingZooEnv
from ray.tune.registry import register_env

SHARED_MODULE_ID = "shared_policy"
# Env packages under `envs/` registered as `seeupo/<name>`.
ENV_PACKAGES = ("bandit",)


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

    ``task_queue`` (a deque, shared by the sub-envs of one env runner) supplies the task
    of each new episode; when it is empty the env draws its own task.
    """

    def __init__(self, aec_env):
        super().__init__(aec_env)
        self.task_queue: collections.deque | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = dict(options or {})
        if "task_id" not in options and self.task_queue:
            options["task_id"] = self.task_queue.popleft()
        self.env.reset(seed=seed, options=options)
        agent = self.env.agent_selection
        return {agent: self.env.observe(agent)}, {agent: dict(self.env.infos.get(agent, {}))}

    def task_ids(self, split: str = "train"):
        """The env's task ids for ``split`` (a sequence; may be a ``range``)."""
        return self.env.unwrapped.task_ids(split)


def make_turn_env(name: str, env_config: dict | None = None) -> TurnAgentEnv:
    """Build ``envs.<name>.env(**env_config)`` wrapped for RLlib."""
    module = importlib.import_module(f"envs.{name}")
    return TurnAgentEnv(module.env(**dict(env_config or {})))


def register_envs() -> None:
    for name in ENV_PACKAGES:
        register_env(f"seeupo/{name}", lambda cfg, _name=name: make_turn_env(_name, cfg))
