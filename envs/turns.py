"""What every turn-as-agent AEC env does when an episode ends (no RLlib or model imports)."""

from __future__ import annotations

from typing import Any

from pettingzoo.utils import AgentSelector


def start_episode(env: Any, info: dict[str, Any]) -> None:
    """Start ``env``'s episode bookkeeping: every turn live with zero reward and its own copy
    of ``info``; ``turn_0`` acts first."""
    env.agents = list(env.possible_agents)
    env.rewards = {a: 0.0 for a in env.agents}
    env._cumulative_rewards = {a: 0.0 for a in env.agents}
    env.terminations = {a: False for a in env.agents}
    env.truncations = {a: False for a in env.agents}
    env.infos = {a: dict(info) for a in env.agents}
    env._agent_selector = AgentSelector(env.agents)
    env.agent_selection = env._agent_selector.reset()


def end_episode(env: Any, last_turn: int, reward: float, summary: dict[str, Any], *, truncated: bool = False) -> None:
    """End ``env``'s episode after turn ``last_turn``: every turn that acted receives the one
    team ``reward`` and the ``summary`` infos and is terminated (or truncated); turns that
    never acted leave the episode without an observation or a reward.

    ``env`` is a PettingZoo AEC env whose ``possible_agents`` are ``turn_0..turn_{T-1}``.
    """
    acted = env.possible_agents[: last_turn + 1]
    for agent in env.possible_agents[last_turn + 1 :]:
        for d in (env.rewards, env._cumulative_rewards, env.terminations, env.truncations, env.infos):
            d.pop(agent, None)
    env.agents = acted
    for agent in acted:
        env.rewards[agent] = reward
        env.terminations[agent] = not truncated
        env.truncations[agent] = truncated
        env.infos[agent].update(summary)
    env.agent_selection = acted[0]


def render_chat(messages: list[dict[str, str]]) -> str:
    """The chat after its system prompt, one ``role: content`` line per message."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages[1:])
