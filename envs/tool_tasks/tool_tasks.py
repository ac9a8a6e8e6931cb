"""Procedurally generated multi-turn tool-use tasks on a small inventory (no download).

Each task is drawn from its integer id: a starting inventory and a request that needs one
to several calls, at one of seven levels:

1. one change: "Add 3 apples."
2. a question: "How many pears are in stock?" (look up, then answer)
3. two changes: "Add 3 apples and remove 2 pears."
4. a conditional: "If there are fewer than 5 kiwis, add 4 kiwis; otherwise remove 2."
   (look up first, decide in a later turn)

Levels 1-4 are the default. Levels 3 and 4 can be solved without reading any tool result
(two independent changes fit one call list; the conditional's branches are unbalanced), so
levels 5-7 make the right later call depend on what an earlier call returned (the items
are never named in the request, so a policy that ignores results must guess one of 8):

5. a pointer: "Add 3 of the item named on the note." (``read_note()`` names it)
6. a choice by stock: "Add 3 to the item with the fewest units in stock." (``list_stock()``)
7. a pointer, then a balanced conditional: "If the item named on the note has fewer than 6
   units, add 3 of it; otherwise remove 2 of it." (read the note, look its stock up, decide)

``read_note`` and ``list_stock`` are in the function docs only when a level that needs them
is configured, so the prompts of levels 1-4 are unchanged.

The model answers in BFCL's call syntax, ``[add_item(item="apple", qty=3)]``; results come
back as the next observation; ``finish(answer=...)`` ends the episode. Reward 1 when the
final inventory is the target and, for a question, the answer is right; else 0; minus an
optional penalty per unparseable turn. Every turn receives it when the episode ends. Turn k of an episode is agent ``turn_k``.
Splits by content: ``test`` ids start at ``10**6``, ``validation`` ids at ``2 * 10**6``; a
``train`` id whose task equals a validation or test task (the same level, request and
inventory) is replaced by a spare id (``TrainTaskIds``), so no held-out task is trained on.
Held-out tasks share their forms (the request templates) with training tasks and differ in
items and numbers: the held-out splits measure new numbers and items of a seen form.
"""

from __future__ import annotations

import dataclasses
import re
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
VALIDATION_OFFSET = 2 * 10**6
SPARE_OFFSET = 3 * 10**6  # replacements for train ids whose task is held out
LEVELS = (1, 2, 3, 4, 5, 6, 7)
# Levels whose right later call depends on what an earlier call returned.
DEPENDENT_LEVELS = (5, 6, 7)
CONDITIONAL_THRESHOLD = 6  # level 7: fewer than this many units -> add, else remove
# name -> (parameters, description): the function docs shown to the model.
FUNCTIONS = {
    "get_stock": (("item",), "units of an item in stock"),
    "add_item": (("item", "qty"), "add qty units of an item"),
    "remove_item": (("item", "qty"), "remove qty units of an item"),
    "finish": (("answer",), "end the task; answer a question in answer"),
    "read_note": ((), "the item named on the note"),
    "list_stock": ((), "units of every item in stock"),
}
PARAMETERS = {name: list(params) for name, (params, _) in FUNCTIONS.items()}
# Functions shown (and runnable) only when a level that needs them is configured.
LEVEL_FUNCTIONS = {"read_note": (5, 7), "list_stock": (6,)}


def functions_for(levels: tuple[int, ...]) -> list[str]:
    return [name for name in FUNCTIONS if name not in LEVEL_FUNCTIONS or set(LEVEL_FUNCTIONS[name]) & set(levels)]
EXAMPLES = """User: Add 2 plums.
Assistant: [add_item(item="plum", qty=2)]
Tool: plum: 9
Assistant: [finish()]
User: How many lemons are in stock?
Assistant: [get_stock(item="lemon")]
Tool: 4
Assistant: [finish(answer="4")]"""


def system_prompt(levels: tuple[int, ...] = (1, 2, 3, 4)) -> str:
    """Compact docs and two worked examples: short prompts keep CPU rollouts cheap, and a
    small model needs the examples to answer in call syntax at all."""
    docs = "\n".join(f"{name}({', '.join(FUNCTIONS[name][0])}): {FUNCTIONS[name][1]}" for name in functions_for(levels))
    return f"Functions:\n{docs}\nReply with a call list like [f(a=1)]; call finish() when done.\n{EXAMPLES}"


@dataclasses.dataclass(frozen=True)
class Task:
    task_id: int
    level: int
    request: str
    inventory: dict[str, int]
    target: dict[str, int]
    answer: str | None  # the expected answer of a question, else None
    note: str | None = None  # the item read_note() names (levels 5 and 7)

    def content(self) -> tuple:
        """What makes two tasks the same task, whatever their ids."""
        return self.level, self.request, tuple(sorted(self.inventory.items())), self.note


def make_task(task_id: int, levels: tuple[int, ...] = (1, 2, 3, 4), level_weights: tuple[float, ...] | None = None) -> Task:
    """The task with this id (deterministic)."""
    rng = np.random.default_rng(task_id)
    level = int(rng.choice(levels, p=None if level_weights is None else np.asarray(level_weights) / np.sum(level_weights)))
    names = [str(x) for x in rng.choice(ITEMS, size=4, replace=False)]
    inventory = {name: int(rng.integers(2, 10)) for name in names}
    target = dict(inventory)
    a, b = names[0], names[1]
    q1, q2 = int(rng.integers(1, 6)), int(rng.integers(1, 3))
    answer, note = None, None
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
    elif level == 4:
        threshold = int(rng.integers(3, 9))
        request = f"If there are fewer than {threshold} {a}s, add {q1} {a}s; otherwise remove {q2} {a}s."
        target[a] = inventory[a] + q1 if inventory[a] < threshold else inventory[a] - q2
    elif level == 5:
        note = names[int(rng.integers(4))]
        request, target[note] = f"Add {q1} of the item named on the note.", inventory[note] + q1
    elif level == 6:
        # Distinct stocks: one item has the fewest.
        for name, units in zip(names, rng.choice(np.arange(2, 10), size=4, replace=False)):
            inventory[name] = target[name] = int(units)
        fewest = min(names, key=inventory.get)
        request, target[fewest] = f"Add {q1} to the item with the fewest units in stock.", inventory[fewest] + q1
    else:
        # The branch is drawn first, then a stock on its side: each branch half the tasks.
        note = names[int(rng.integers(4))]
        fewer = bool(rng.random() < 0.5)
        units = int(rng.integers(2, CONDITIONAL_THRESHOLD) if fewer else rng.integers(CONDITIONAL_THRESHOLD, 10))
        inventory[note] = units
        target = dict(inventory)
        target[note] = units + q1 if fewer else units - q2
        request = (f"If the item named on the note has fewer than {CONDITIONAL_THRESHOLD} units, add {q1} of it; "
                   f"otherwise remove {q2} of it.")
    return Task(task_id, level, request, inventory, target, answer, note)


class TrainTaskIds:
    """The train split's ids ``[0, 10**6)``, each id whose task equals a held-out task (of
    ``held_out``: validation and test tasks) replaced by a spare id (``i + 3 * 10**6``, then
    ``+ 10**6`` until it is not held out). A lazy sequence: tasks are made when drawn."""

    def __init__(self, held_out: set[tuple], levels: tuple[int, ...], level_weights: tuple[float, ...] | None):
        self.held_out, self.levels, self.level_weights = held_out, levels, level_weights

    def __len__(self) -> int:
        return TEST_OFFSET

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < TEST_OFFSET:
            raise IndexError(index)
        task_id = int(index)
        while make_task(task_id, self.levels, self.level_weights).content() in self.held_out:
            task_id = task_id + SPARE_OFFSET if task_id < SPARE_OFFSET else task_id + TEST_OFFSET
        return task_id


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
        num_validation_tasks: int = 200,
    ):
        super().__init__()
        if max_turns < 1:
            raise ValueError(f"tool_tasks max_turns must be >= 1, got {max_turns}")
        if not levels or not set(levels) <= set(LEVELS):
            raise ValueError(f"tool_tasks levels must be within 1..7, got {levels}")
        if max_action_chars < 1 or max_result_chars < 1:
            raise ValueError(f"tool_tasks max_action_chars and max_result_chars must be >= 1, got {max_action_chars}, {max_result_chars}")
        self.max_turns = max_turns
        self.levels = tuple(levels)
        self.level_weights = None if level_weights is None else tuple(level_weights)
        self.parse_error_penalty = parse_error_penalty
        self.num_test_tasks = num_test_tasks
        self.num_validation_tasks = num_validation_tasks
        self.functions = set(functions_for(self.levels))
        self._train_ids = None
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
        if split == "test":
            return range(TEST_OFFSET, TEST_OFFSET + self.num_test_tasks)
        if split == "validation":
            return range(VALIDATION_OFFSET, VALIDATION_OFFSET + self.num_validation_tasks)
        if split == "train":
            if self._train_ids is None:
                held_out = {
                    make_task(i, self.levels, self.level_weights).content()
                    for i in [*self.task_ids("validation"), *self.task_ids("test")]
                }
                self._train_ids = TrainTaskIds(held_out, self.levels, self.level_weights)
            return self._train_ids
        raise ValueError(f"tool_tasks has splits 'train', 'validation' and 'test', got {split!r}")

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task_id = (options or {}).get("task_id")
        if task_id is None:
            task_id = int(self._rng.integers(TEST_OFFSET))
        self.task = make_task(int(task_id), self.levels, self.level_weights)
        self.inventory = dict(self.task.inventory)
        self.messages = [
            {"role": "system", "content": system_prompt(self.levels)},
            {"role": "user", "content": self.task.request},
        ]
        self.answer: str | None = None
        self.parse_errors = 0
        start_episode(self, {"task_id": self.task.task_id, "level": self.task.level})

    def observe(self, agent: str) -> TextObservation:
        return TextObservation(encode_messages(self.messages))

    def blind_baselines(self, task_ids) -> dict[str, float]:
        """Per level of ``task_ids``, the success of the best policy that never reads a tool
        result (``reference_success``): what a level's held-out figure must beat to show
        that the tool results were used. Held-out evaluation reports it beside each level."""
        reference = reference_success(task_ids, levels=self.levels, max_turns=self.max_turns,
                                      level_weights=self.level_weights)
        return {str(level): figures["blind"] for level, figures in reference.items()}

    def demonstrations(self, task_ids) -> list[list[dict[str, str]]]:
        """The chat of the scripted solver (``oracle_response``) on each task of ``task_ids``,
        under this env's settings: demonstrations for a warm start
        (``rllib_seeupo.llm.warm_start``)."""
        chats = []
        for task_id in task_ids:
            demo = raw_env(max_turns=self.max_turns, levels=self.levels, level_weights=self.level_weights,
                           max_action_chars=self._action_space.max_length, max_result_chars=self.max_result_chars)
            demo.reset(options={"task_id": int(task_id)})
            while demo.agents and not demo.terminations[demo.agent_selection]:
                demo.step(oracle_response(demo.task, demo.messages))
            chats.append(list(demo.messages))
        return chats

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
        if call.name == "read_note":
            return (True, self.task.note) if self.task.note else (False, "Error: there is no note")
        if call.name == "list_stock":
            return True, ", ".join(f"{item}: {units}" for item, units in self.inventory.items())
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
            calls = parse_calls(text, self.functions)
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


def _change(item: str, delta: int) -> str:
    return f'[add_item(item="{item}", qty={delta})]' if delta > 0 else f'[remove_item(item="{item}", qty={-delta})]'


def oracle_response(task: Task, messages: list[dict[str, str]]) -> str:
    """A scripted policy that solves every task (used by tests and as a reference). It reads
    what it needs from the tool results in ``messages``, never from ``task``'s hidden fields."""
    turn = sum(m["role"] == "assistant" for m in messages)
    result = messages[-1]["content"].strip()
    q1, q2 = _quantities(task.request)
    if task.level == 5:
        return ["[read_note()]", f'[add_item(item="{result}", qty={q1})]', "[finish()]"][min(turn, 2)]
    if task.level == 6:
        if turn == 0:
            return "[list_stock()]"
        if turn == 1:
            stock = dict((name, int(units)) for name, units in (pair.split(": ") for pair in result.split(", ")))
            return f'[add_item(item="{min(stock, key=stock.get)}", qty={q1})]'
        return "[finish()]"
    if task.level == 7:
        if turn == 0:
            return "[read_note()]"
        item = messages[3]["content"].strip()  # the note: the tool's reply to turn 0
        if turn == 1:
            return f'[get_stock(item="{item}")]'
        if turn == 2:
            return _change(item, q1 if int(result) < CONDITIONAL_THRESHOLD else -q2)
        return "[finish()]"
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
        return _change(a, task.target[a] - task.inventory[a])
    return "[finish()]"


def _quantities(request: str) -> tuple[int, int]:
    """The quantities a request names to add and to remove (0 where it names none)."""
    add = re.search(r"[Aa]dd (\d+)", request)
    remove = re.search(r"[Rr]emove (\d+)", request)
    return int(add.group(1)) if add else 0, int(remove.group(1)) if remove else 0


def blind_policies(level: int) -> dict[str, Any]:
    """Policies that never read a tool result, by name: each maps a task's request to its
    fixed responses (one per turn). A policy names its items itself, since the requests of
    levels 5-7 name none; the best of them is a level's blind baseline.

    Returns ``{name: callable(request) -> list of responses}``."""
    policies = {}
    for item in ITEMS:
        if level in (5, 6):
            policies[f"add to {item}"] = lambda request, item=item: [
                f'[add_item(item="{item}", qty={_quantities(request)[0]})]', "[finish()]"]
        elif level == 7:
            policies[f"add to {item}"] = lambda request, item=item: [
                f'[add_item(item="{item}", qty={_quantities(request)[0]})]', "[finish()]"]
            policies[f"remove from {item}"] = lambda request, item=item: [
                f'[remove_item(item="{item}", qty={_quantities(request)[1]})]', "[finish()]"]
    if level == 2:
        for units in range(2, 10):
            policies[f"answer {units}"] = lambda request, units=units: [f'[finish(answer="{units}")]']
    if level == 4:
        def branch(request, add):
            item = re.search(r"fewer than \d+ (\w+)s,", request).group(1)
            q1, q2 = [int(n) for n in re.findall(r"(?:add|remove) (\d+)", request)]
            return [_change(item, q1 if add else -q2), "[finish()]"]

        policies["always add"] = lambda request: branch(request, True)
        policies["always remove"] = lambda request: branch(request, False)
    return policies


def play(task_id: int, respond, *, levels: tuple[int, ...], max_turns: int,
         level_weights: tuple[float, ...] | None = None) -> float:
    """Success of one episode of task ``task_id`` played by ``respond(task, messages, turn)``."""
    e = raw_env(max_turns=max_turns, levels=levels, level_weights=level_weights)
    e.reset(options={"task_id": task_id})
    turn = 0
    while e.agents and not e.terminations[e.agent_selection]:
        e.step(respond(e.task, e.messages, turn))
        turn += 1
    return float(e.infos[e.possible_agents[0]]["success"])


def reference_success(split_ids, *, levels: tuple[int, ...], max_turns: int = 3, seed: int = 0,
                      level_weights: tuple[float, ...] | None = None) -> dict[int, dict[str, float]]:
    """Per level, the success of three reference policies over ``split_ids``: ``oracle``, the
    best ``blind`` policy (``blind_policies``; ``blind_policy`` names it) and ``random`` (each
    turn a uniformly random valid call: a function of the configured levels, an item of the
    task's inventory, a quantity of 1-5)."""
    rng = np.random.default_rng(seed)
    tasks = [make_task(i, levels, level_weights) for i in split_ids]
    by_level: dict[int, list[Task]] = {}
    for task in tasks:
        by_level.setdefault(task.level, []).append(task)
    functions = functions_for(levels)
    out = {}
    for level, level_tasks in sorted(by_level.items()):
        ids = [t.task_id for t in level_tasks]
        oracle = np.mean([play(i, lambda task, messages, turn: oracle_response(task, messages), levels=levels,
                               max_turns=max_turns, level_weights=level_weights) for i in ids])

        def random_call(task, messages, turn):
            name = functions[int(rng.integers(len(functions)))]
            item = list(task.inventory)[int(rng.integers(4))]
            args = {"get_stock": f'item="{item}"', "add_item": f'item="{item}", qty={int(rng.integers(1, 6))}',
                    "remove_item": f'item="{item}", qty={int(rng.integers(1, 6))}'}.get(name, "")
            return f"[{name}({args})]"

        random_success = np.mean([play(i, random_call, levels=levels, max_turns=max_turns, level_weights=level_weights)
                                  for i in ids])
        blind = {}
        candidates = blind_policies(level) or {"oracle's first call list": None}
        for name, policy in candidates.items():
            if policy is None:  # levels 1 and 3 need no tool result: the oracle is blind
                blind[name] = oracle
                continue
            blind[name] = np.mean([
                play(i, lambda task, messages, turn, policy=policy: policy(task.request)[min(turn, len(policy(task.request)) - 1)],
                     levels=levels, max_turns=max_turns, level_weights=level_weights)
                for i in ids
            ])
        best = max(blind, key=blind.get)
        out[level] = {"tasks": len(ids), "oracle": float(oracle), "blind": float(blind[best]), "blind_policy": best,
                      "random": float(random_success)}
    return out


def env(**config: Any) -> raw_env:
    return raw_env(**config)
