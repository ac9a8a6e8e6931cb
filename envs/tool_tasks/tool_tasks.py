"""Procedurally generated multi-turn tool-use tasks on a small inventory (no download).

Each task is drawn from its integer id: a starting inventory and a request that needs one
to several calls, at one of four difficulty levels:

1. one change: "Add 3 apples."
2. a question: "How many pears are in stock?" (look up, then answer)
3. two changes: "Add 3 apples and remove 2 pears."
4. a conditional: "If there are fewer than 5 kiwis, add 4 kiwis; otherwise remove 2."
   (look up first, decide in a later turn)

The model answers in BFCL's call syntax, ``[add_item(item="apple", qty=3)]``; results come
back as the next observation; ``finish(answer=...)`` ends the episode. Reward 1 when the
final inventory is the target and, for a question, the answer is right; else 0; minus an
optional penalty per unparseable turn. Every turn receives it when the episode ends. Turn k of an episode is agent ``turn_k``.
Train ids are ``[0, 10**6)``; test ids start at ``10**6``: the two never overlap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium
import numpy as np
from pettingzoo import AECEnv

from envs.text import (
    MAX_MARKER_CHARS, AnyText, Call, CallSyntaxError, TextObservation, as_text, chat_bound, cut_text, encode_messages, parse_calls,
)
from envs.turns import end_episode, render_chat, start_episode

ITEMS = ("apple", "pear", "banana", "orange", "lemon", "mango", "plum", "kiwi")
TEST_OFFSET = 10**6
# name -> (parameters, description): the function docs shown to the model.
FUNCTIONS = {
    "get_stock": (("item",), "units of an item in stock"),
    "add_item": (("item", "qty"), "add qty units of an item"),
    "remove_item": (("item", "qty"), "remove qty units of an item"),
    "finish": (("answer",), "end the task; answer a question in answer"),
}
PARAMETERS = {name: list(params) for name, (params, _) in FUNCTIONS.items()}
EXAMPLES = """User: Add 2 plums.
Assistant: [add_item(item="plum", qty=2)]
Tool: plum: 9
Assistant: [finish()]
User: How many lemons are in stock?
Assistant: [get_stock(item="lemon")]
Tool: 4
Assistant: [finish(answer="4")]"""


def system_prompt() -> str:
    """Compact docs and two worked examples: short prompts keep CPU rollouts cheap, and a
    small model needs the examples to answer in call syntax at all."""
    docs = "\n".join(f"{name}({', '.join(params)}): {text}" for name, (params, text) in FUNCTIONS.items())
    return f"Functions:\n{docs}\nReply with a call list like [f(a=1)]; call finish() when done.\n{EXAMPLES}"


@dataclasses.dataclass(frozen=True)
class Task:
    task_id: int
    level: int
    request: str
    inventory: dict[str, int]
    target: dict[str, int]
    answer: str | None  # the expected answer of a question, else None


def make_task(task_id: int, levels: tuple[int, ...] = (1, 2, 3, 4), level_weights: tuple[float, ...] | None = None) -> Task:
    """The task with this id (deterministic)."""
    rng = np.random.default_rng(task_id)
    level = int(rng.choice(levels, p=None if level_weights is None else np.asarray(level_weights) / np.sum(level_weights)))
    names = [str(x) for x in rng.choice(ITEMS, size=4, replace=False)]
    inventory = {name: int(rng.integers(2, 10)) for name in names}
    target = dict(inventory)
    a, b = names[0], names[1]
    q1, q2 = int(rng.integers(1, 6)), int(rng.integers(1, 3))
    answer = None
    if level == 1:
        if rng.random() < 0.5:
            request, target[a] = f"Add {q1} {a}s.", inventory[a] + q1
        else:
            request, target[a] = f"Remove {q2} {a}s.", inventory[a] - q2
    elif level == 2:
        request, answer = f"How many {a}s are in stock?", str(inventory[a])
    elif level == 3:
        request = f"Add {q1} {a}s and remove {q2} {b}s."
        target[a], target[b] = inventory[a] + q1, inventory[b] - q2
    else:
        threshold = int(rng.integers(3, 9))
        request = f"If there are fewer than {threshold} {a}s, add {q1} {a}s; otherwise remove {q2} {a}s."
        target[a] = inventory[a] + q1 if inventory[a] < threshold else inventory[a] - q2
    return Task(task_id, level, request, inventory, target, answer)


class raw_env(AECEnv):
    """PettingZoo AEC env: agent ``turn_k`` writes the k-th assistant message.

    Observations are the chat so far (a JSON list of ``{"role", "content"}``), actions the
    model's text. ``reset(options={"task_id": i})`` pins the task. ``infos[agent]`` holds
    ``task_id``, ``level`` and, once the episode is over, ``success``, ``parse_errors``,
    ``num_turns``.
    """

    metadata = {"name": "seeupo_tool_tasks_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(
        self,
        max_turns: int = 4,
        levels: tuple[int, ...] | list[int] = (1, 2, 3, 4),
        level_weights: tuple[float, ...] | list[float] | None = None,
        parse_error_penalty: float = 0.0,
        num_test_tasks: int = 200,
        max_action_chars: int = 4000,
        max_result_chars: int = 500,
        render_mode: str | None = None,
    ):
        super().__init__()
        if max_turns < 1:
            raise ValueError(f"tool_tasks max_turns must be >= 1, got {max_turns}")
        if not set(levels) <= {1, 2, 3, 4}:
            raise ValueError(f"tool_tasks levels must be within 1..4, got {levels}")
        if max_action_chars < 1 or max_result_chars < 1:
            raise ValueError(f"tool_tasks max_action_chars and max_result_chars must be >= 1, got {max_action_chars}, {max_result_chars}")
        self.max_turns = max_turns
        self.levels = tuple(levels)
        self.level_weights = None if level_weights is None else tuple(level_weights)
        self.parse_error_penalty = parse_error_penalty
        self.num_test_tasks = num_test_tasks
        self.max_result_chars = max_result_chars
        self.render_mode = render_mode
        self.possible_agents = [f"turn_{k}" for k in range(max_turns)]
        self._action_space = AnyText(max_action_chars)
        # The chat grows by one action and one (cut) tool reply per turn.
        self._observation_space = AnyText(chat_bound(2_000, max_turns, max_action_chars + max_result_chars + MAX_MARKER_CHARS))
        self._rng = np.random.default_rng()

    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._observation_space

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._action_space

    def task_ids(self, split: str = "train"):
        if split == "train":
            return range(0, TEST_OFFSET)
        if split == "test":
            return range(TEST_OFFSET, TEST_OFFSET + self.num_test_tasks)
        raise ValueError(f"tool_tasks has splits 'train' and 'test', got {split!r}")

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task_id = (options or {}).get("task_id")
        if task_id is None:
            task_id = int(self._rng.integers(TEST_OFFSET))
        self.task = make_task(int(task_id), self.levels, self.level_weights)
        self.inventory = dict(self.task.inventory)
        self.messages = [
            {"role": "system", "content": system_prompt()},
            {"role": "user", "content": self.task.request},
        ]
        self.answer: str | None = None
        self.parse_errors = 0
        start_episode(self, {"task_id": self.task.task_id, "level": self.task.level})

    def observe(self, agent: str) -> TextObservation:
        return TextObservation(encode_messages(self.messages))

    def _execute(self, call: Call) -> tuple[bool, str]:
        """Run one call on the inventory: ``(ok, result)``; a failed call changes nothing."""
        params = PARAMETERS[call.name]
        if len(call.args) > len(params):
            return False, f"Error: {call.name} takes at most {len(params)} arguments, got {len(call.args)}"
        kwargs = dict(zip(params, call.args))
        for key, value in call.kwargs.items():
            if key not in params:
                return False, f"Error: {call.name} has no parameter {key!r}"
            if key in kwargs:
                return False, f"Error: {call.name} got two values for {key!r}"
            kwargs[key] = value
        if call.name == "finish":
            self.answer = str(kwargs.get("answer", "")).strip()
            return True, "done"
        item = kwargs.get("item")
        # A string first: an unhashable value (a list, a dict) cannot be looked up.
        if not isinstance(item, str) or item not in self.inventory:
            return False, f"Error: unknown item {item!r}; items: {', '.join(sorted(self.inventory))}"
        if call.name == "get_stock":
            return True, str(self.inventory[item])
        qty = kwargs.get("qty")
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
            return False, f"Error: qty must be a positive integer, got {qty!r}"
        if call.name == "remove_item" and qty > self.inventory[item]:
            return False, f"Error: only {self.inventory[item]} {item} in stock"
        self.inventory[item] += qty if call.name == "add_item" else -qty
        return True, f"{item}: {self.inventory[item]}"

    def _run(self, text: str) -> str:
        """The tool feedback on one response: the result of every call that ran, in order,
        up to and including the first that failed (the calls after it, or after
        ``finish``, do not run), the whole cut to ``max_result_chars``."""
        try:
            calls = parse_calls(text, set(PARAMETERS))
        except CallSyntaxError as error:
            self.parse_errors += 1
            return cut_text(f"Error: {error}", self.max_result_chars)
        if not calls:
            return "Error: empty call list"
        results = []
        for position, call in enumerate(calls):
            ok, result = self._execute(call)
            results.append(result)
            if not ok or self.answer is not None:
                if position + 1 < len(calls):
                    results.append(f"({len(calls) - position - 1} later call(s) not run)")
                break
        return cut_text("\n".join(results), self.max_result_chars)

    def step(self, action: str | None) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        text = as_text(action)[: self._action_space.max_length]
        self.messages.append({"role": "assistant", "content": text})
        self.messages.append({"role": "tool", "content": self._run(text)})
        self._cumulative_rewards[agent] = 0.0
        self.rewards = {a: 0.0 for a in self.agents}
        turn = self.possible_agents.index(agent)
        if self.answer is not None or turn == self.max_turns - 1:
            self._finish(turn)
        else:
            self.agent_selection = self._agent_selector.next()
        self._accumulate_rewards()

    def _finish(self, last_turn: int) -> None:
        success = self.inventory == self.task.target and (
            self.task.answer is None or (self.answer or "").strip().rstrip(".") == self.task.answer
        )
        # One team reward at the end, shared by every turn (penalties included).
        reward = float(success) - self.parse_error_penalty * self.parse_errors
        summary = {"success": float(success), "parse_errors": self.parse_errors, "num_turns": last_turn + 1}
        end_episode(self, last_turn, reward, summary)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return render_chat(self.messages)
        return None

    def close(self) -> None:
        pass


def oracle_response(task: Task, messages: list[dict[str, str]]) -> str:
    """A scripted policy that solves every task (used by tests and as a reference)."""
    turn = sum(m["role"] == "assistant" for m in messages)
    a = next(iter(task.inventory))
    if task.level in (1, 3):
        if turn == 0:
            calls = []
            for item in task.inventory:
                delta = task.target[item] - task.inventory[item]
                if delta > 0:
                    calls.append(f'add_item(item="{item}", qty={delta})')
                elif delta < 0:
                    calls.append(f'remove_item(item="{item}", qty={-delta})')
            return "[" + ", ".join(calls) + "]"
        return "[finish()]"
    if turn == 0:
        return f'[get_stock(item="{a}")]'
    if task.level == 2:
        return f'[finish(answer="{messages[-1]["content"].strip()}")]'
    if turn == 1:
        delta = task.target[a] - task.inventory[a]
        return f'[add_item(item="{a}", qty={delta})]' if delta > 0 else f'[remove_item(item="{a}", qty={-delta})]'
    return "[finish()]"


def env(**config: Any) -> raw_env:
    return raw_env(**config)
