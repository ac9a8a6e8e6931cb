"""A tabular multi-turn contextual bandit whose objective J(pi) is exactly computable.

An episode draws a context c (the task). Turn k (agent ``turn_k``) picks one of K actions;
after the last of T turns every turn receives the same reward ``R[c, a_0 ... a_{T-1}]``,
a table over whole action sequences. It is the smallest multi-turn problem on which the
order of per-turn updates matters, used to check SeeUPO's theory (docs/design.md section 1.7).

Observation (a single integer state id, so that a tabular policy is a logits table):
- ``"full"``: the context and the whole history ``(c, k, a_0 ... a_{k-1})``.
- ``"partial"``: the context and the turn index ``(c, k)``; the history is hidden.

No RLlib and no model imports: numpy and PettingZoo only.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import gymnasium
import numpy as np
from pettingzoo import AECEnv
from pettingzoo.utils import AgentSelector

OBSERVATIONS = ("full", "partial")
KINDS = ("random", "needle")


def turn_agent(k: int) -> str:
    return f"turn_{k}"


@dataclasses.dataclass(frozen=True)
class BanditInstance:
    """One bandit problem: a reward table over action sequences for each context.

    Attributes:
        rewards: ``(num_contexts, num_actions ** num_turns)``; column s is the sequence
            ``sequences[s]``.
        sequences: ``(num_actions ** num_turns, num_turns)`` every action sequence, in
            lexicographic order (so column s of ``rewards`` is ``s`` written in base K).
        sequence_states: ``(num_contexts, num_actions ** num_turns, num_turns)`` the state
            id observed at each turn of each sequence in each context.
    """

    num_turns: int
    num_actions: int
    num_contexts: int
    observation: str
    rewards: np.ndarray
    sequences: np.ndarray
    sequence_states: np.ndarray

    @property
    def num_states(self) -> int:
        if self.observation == "partial":
            return self.num_contexts * self.num_turns
        return self.num_contexts * self._states_per_context()

    def _states_per_context(self) -> int:
        return sum(self.num_actions**k for k in range(self.num_turns))

    def state_id(self, context: int, prefix: tuple[int, ...] | list[int]) -> int:
        """The state a turn observes after the actions ``prefix`` in ``context``."""
        k = len(prefix)
        if self.observation == "partial":
            return context * self.num_turns + k
        offset = sum(self.num_actions**j for j in range(k))
        index = 0
        for a in prefix:
            index = index * self.num_actions + int(a)
        return context * self._states_per_context() + offset + index

    def sequence_index(self, actions: tuple[int, ...] | list[int]) -> int:
        index = 0
        for a in actions:
            index = index * self.num_actions + int(a)
        return index

    def state_features(self) -> np.ndarray:
        """``(num_states, C + T + (T - 1) * (K + 1))`` a one-hot description of every state
        id: its context, its turn and, per earlier turn, the action taken there (or "not
        yet" / "hidden"). Policies that share parameters across turns read these."""
        C, T, K = self.num_contexts, self.num_turns, self.num_actions
        features = np.zeros((self.num_states, C + T + (T - 1) * (K + 1)), dtype=np.float32)
        for c in range(C):
            for k in range(T):
                hidden = self.observation == "partial"
                for prefix in [(0,) * k] if hidden else itertools.product(range(K), repeat=k):
                    row = features[self.state_id(c, prefix)]
                    row[c] = row[C + k] = 1.0
                    for j in range(T - 1):
                        slot = prefix[j] if j < k and not hidden else K
                        row[C + T + j * (K + 1) + slot] = 1.0
        return features

    def reward(self, context: int, actions: tuple[int, ...] | list[int]) -> float:
        return float(self.rewards[context, self.sequence_index(actions)])

    def sequence_probabilities(self, policy: np.ndarray) -> np.ndarray:
        """Probability of every action sequence in every context.

        Args:
            policy: ``(num_states, num_actions)`` action probabilities per state.
        Returns:
            ``(num_contexts, num_actions ** num_turns)``.
        """
        policy = np.asarray(policy, dtype=np.float64)
        per_turn = policy[self.sequence_states, self.sequences[None, :, :]]
        return per_turn.prod(axis=-1)

    def objective(self, policy: np.ndarray) -> float:
        """J(pi): the expected reward, contexts drawn uniformly."""
        probs = self.sequence_probabilities(policy)
        return float((probs * self.rewards).sum(axis=1).mean())

    def optimal_objective(self) -> float:
        """J*: every context's best sequence (a deterministic policy reaches it under
        both observation modes, since the context is always observed)."""
        return float(self.rewards.max(axis=1).mean())

    def optimal_sequences(self) -> np.ndarray:
        """``(num_contexts, num_turns)`` the best action sequence per context."""
        return self.sequences[self.rewards.argmax(axis=1)]


def make_instance(
    *,
    num_turns: int = 4,
    num_actions: int = 3,
    num_contexts: int = 1,
    kind: str = "needle",
    observation: str = "full",
    seed: int = 0,
    distractor_reward: float = 0.6,
) -> BanditInstance:
    """Generate a bandit instance from a seed.

    Kinds:
    - ``"random"``: every sequence's reward is uniform on [0, 1).
    - ``"needle"`` (deceptive): one exact sequence (the needle) pays 1; a distractor action
      per turn pays ``distractor_reward`` times the share of turns that played it, plus a
      little noise. Under a uniform continuation the needle's first move looks worse than
      the distractor's, so greedy or forward reasoning is led away from the optimum.
    """
    if num_turns < 1 or num_actions < 2 or num_contexts < 1:
        raise ValueError(
            "bandit needs num_turns >= 1, num_actions >= 2 and num_contexts >= 1, got "
            f"num_turns={num_turns}, num_actions={num_actions}, num_contexts={num_contexts}"
        )
    if kind not in KINDS:
        raise ValueError(f"bandit kind must be one of {KINDS}, got {kind!r}")
    if observation not in OBSERVATIONS:
        raise ValueError(f"bandit observation must be one of {OBSERVATIONS}, got {observation!r}")
    rng = np.random.default_rng(seed)
    sequences = np.array(list(itertools.product(range(num_actions), repeat=num_turns)), dtype=np.int64)
    num_sequences = len(sequences)
    if kind == "random":
        rewards = rng.random((num_contexts, num_sequences))
    else:
        rewards = np.empty((num_contexts, num_sequences))
        for c in range(num_contexts):
            needle = rng.integers(num_actions, size=num_turns)
            # The distractor differs from the needle at every turn.
            distractor = (needle + rng.integers(1, num_actions, size=num_turns)) % num_actions
            share = (sequences == distractor[None, :]).mean(axis=1)
            rewards[c] = distractor_reward * share + 0.02 * rng.random(num_sequences)
            rewards[c, (sequences == needle[None, :]).all(axis=1)] = 1.0
    instance = BanditInstance(
        num_turns=num_turns,
        num_actions=num_actions,
        num_contexts=num_contexts,
        observation=observation,
        rewards=rewards,
        sequences=sequences,
        sequence_states=np.zeros((num_contexts, num_sequences, num_turns), dtype=np.int64),
    )
    for c in range(num_contexts):
        for s, seq in enumerate(sequences):
            for k in range(num_turns):
                instance.sequence_states[c, s, k] = instance.state_id(c, tuple(seq[:k]))
    return instance


class raw_env(AECEnv):
    """PettingZoo AEC env: agents ``turn_0 .. turn_{T-1}`` act once each, in order.

    ``reset(options={"task_id": c})`` pins the context; without it the context is drawn
    uniformly. ``infos[agent]`` holds ``task_id`` and ``turn``. Every turn receives the
    sequence's reward when the last turn has acted.
    """

    metadata = {"name": "seeupo_bandit_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(
        self,
        num_turns: int = 4,
        num_actions: int = 3,
        num_contexts: int = 1,
        kind: str = "needle",
        observation: str = "full",
        seed: int = 0,
        distractor_reward: float = 0.6,
        render_mode: str | None = None,
    ):
        super().__init__()
        self.instance = make_instance(
            num_turns=num_turns,
            num_actions=num_actions,
            num_contexts=num_contexts,
            kind=kind,
            observation=observation,
            seed=seed,
            distractor_reward=distractor_reward,
        )
        self.render_mode = render_mode
        self.possible_agents = [turn_agent(k) for k in range(num_turns)]
        self._observation_space = gymnasium.spaces.Discrete(self.instance.num_states)
        self._action_space = gymnasium.spaces.Discrete(num_actions)
        self._context = 0
        self._actions: list[int] = []

    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._observation_space

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._action_space

    def task_ids(self, split: str = "train") -> list[int]:
        """Every context is a task; the bandit has no held-out split."""
        return list(range(self.instance.num_contexts))

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if seed is not None or not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(seed)
        task_id = (options or {}).get("task_id")
        if task_id is None:
            task_id = int(self._rng.integers(self.instance.num_contexts))
        if not 0 <= int(task_id) < self.instance.num_contexts:
            raise ValueError(
                f"bandit task_id must be in [0, {self.instance.num_contexts}), got {task_id!r}"
            )
        self._context = int(task_id)
        self._actions = []
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = {a: {"task_id": self._context, "turn": k} for k, a in enumerate(self.agents)}
        self._agent_selector = AgentSelector(self.agents)
        self.agent_selection = self._agent_selector.reset()

    def observe(self, agent: str) -> np.ndarray:
        k = self.possible_agents.index(agent)
        # A turn that has not acted yet sees its state as if the missing moves were 0.
        prefix = (self._actions + [0] * self.instance.num_turns)[:k]
        return np.asarray(self.instance.state_id(self._context, prefix), dtype=np.int64)

    def step(self, action: int | None) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        if action is None or not self._action_space.contains(int(action)):
            raise ValueError(f"bandit action must be in [0, {self.instance.num_actions}), got {action!r}")
        self._cumulative_rewards[agent] = 0.0
        self._actions.append(int(action))
        self.rewards = {a: 0.0 for a in self.agents}
        if len(self._actions) == self.instance.num_turns:
            reward = self.instance.reward(self._context, self._actions)
            self.rewards = {a: reward for a in self.agents}
            self.terminations = {a: True for a in self.agents}
        self.agent_selection = self._agent_selector.next()
        self._accumulate_rewards()

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return f"context={self._context} actions={self._actions}"
        return None

    def close(self) -> None:
        pass


def env(**config: Any) -> raw_env:
    """The bandit as an AEC env (PettingZoo's ``env()`` convention)."""
    return raw_env(**config)
