"""BFCL v4 multi-turn (``bfcl-eval``'s data, backends and checker) as a turn-as-agent env.

An episode is one BFCL entry. The user turns of the entry arrive one after another; agent
``turn_k`` writes the k-th model response of the episode, in BFCL's call syntax
``[func(param=value), ...]``. bfcl-eval's own pieces do the work: its system-prompt builder,
its executor (on backend instances private to the episode) and its ``multi_turn_checker``.

What a response does (``backend.decode_response``):

- a non-empty list of allowed calls (any function of the entry, held-out ones included,
  as bfcl's executor allows): they run (as written, positional arguments included);
  each result comes back as a ``tool`` message (``name`` = the call, as bfcl's prompting
  handlers do) and the model goes on within the same user turn;
- no call at all (prose, or ``[]``): as in BFCL, the model is done with this user turn;
  the next user turn starts (with held-out functions handed over at their turn, for
  ``miss_func``), or, after the last one, the episode ends and is scored;
- a malformed or disallowed call attempt (syntax error, a function not in the entry's
  current list, non-literal arguments, attribute chains, comprehensions, ...): nothing of
  it runs; an error ``tool`` message comes back, ``parse_errors`` grows, and it counts as
  a step of the user turn.

Endings (nothing ever raises out of ``step``):

- all user turns answered: terminated; reward from the checker;
- more than ``max_steps_per_turn`` steps in one user turn (BFCL's ``MAXIMUM_STEP_LIMIT``
  rule, 20): terminated and failed, as BFCL's force-quit (``end_reason="step_limit"``);
- the ``max_turns``-th response is spent first: truncated (``"max_turns"``);
- the next observation would exceed ``max_context_chars``: truncated (``"context_limit"``);
  tool results are cut to ``max_result_chars`` each and ``max_step_chars`` per step;
  a first observation that is already too long ends the episode at the first step,
  whose action is not run;
- a backend or checker failure: truncated, reward 0 (``"env_error"``, the error in the infos).

On truncation the checker scores the transcript so far (user turns not reached count as
empty). Reward: 1 if the checker says valid, else 0 (``partial_credit=True``: the share of
checked user turns that pass, see ``backend.turn_passes``), minus ``parse_error_penalty``
per parse error, given to every turn at the end. Infos at the end: ``success``,
``parse_errors``, ``num_turns`` (responses), ``category``, ``partial_credit``,
``user_turns``, ``user_turns_done``, ``end_reason``; always ``task_id`` (the entry id).

Split: ``task_ids("train" | "test")``; an entry is in the test split iff its scenario
number N is among the ``round(test_fraction * 200)`` numbers with the smallest
``sha256("bfcl-v4-multi-turn/N")`` (the same N is in the same split in all categories).
"""

from __future__ import annotations

import uuid
from typing import Any

import gymnasium
import numpy as np
from pettingzoo import AECEnv

from envs.bfcl import backend, prompts
from envs.text import (
    MAX_MARKER_CHARS, MESSAGE_OVERHEAD, AnyText, TextObservation, as_text, cap_results, chat_bound, encode_messages,
)
from envs.turns import end_episode, render_chat, start_episode

# The longest first observation (encoded chat) of any BFCL v4 multi-turn entry in any doc
# format is about 56k characters (tests/test_bfcl_env.py checks that all stay below this).
FIRST_OBSERVATION_CHARS = 80_000


class raw_env(AECEnv):
    """PettingZoo AEC env over BFCL v4 multi-turn entries (see the module docstring).

    Args:
        categories: BFCL categories to draw entries from (a name or a list).
        ids: restrict the entries (both splits) to these ids.
        test_fraction: share of the 200 scenarios in the test split.
        max_turns: model responses per episode (agents ``turn_0..turn_{max_turns-1}``).
        max_steps_per_turn: steps allowed in one user turn; one more fails the entry
            (None: bfcl's ``MAXIMUM_STEP_LIMIT``, 20).
        doc_format: ``"json"`` (BFCL's default), ``"compact"``, ``"python"`` or ``"xml"``.
        max_context_chars: budget for an observation (the JSON-encoded chat): the episode
            ends (truncated) when the next observation would be longer. The default,
            96 000 characters (about 27k tokens), fits the 28k-token prompts of the
            Qwen3-14B example; BFCL's longest first prompt is about 56k characters.
        max_action_chars: responses are cut to this length.
        max_result_chars: one tool result is cut to this many characters (a visible
            marker says how many were cut).
        max_step_chars: all tool results of one step together are cut to this many.
        max_calls_per_step: a response with more calls is an error observation and runs
            nothing (BFCL's ground truth has at most 34 in one user turn).
        partial_credit: reward the share of passed user turns instead of 0/1 success.
        parse_error_penalty: subtracted from the reward per parse error.
    """

    metadata = {"name": "seeupo_bfcl_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(
        self,
        categories: str | list[str] | tuple[str, ...] = backend.CATEGORIES,
        ids: list[str] | tuple[str, ...] | None = None,
        test_fraction: float = 0.25,
        max_turns: int = 20,
        max_steps_per_turn: int | None = None,
        doc_format: str = "json",
        max_context_chars: int = 96_000,
        max_action_chars: int = 8000,
        max_result_chars: int = 4000,
        max_step_chars: int = 16_000,
        max_calls_per_step: int = 64,
        partial_credit: bool = False,
        parse_error_penalty: float = 0.0,
        render_mode: str | None = None,
    ):
        super().__init__()
        categories = (categories,) if isinstance(categories, str) else tuple(categories)
        unknown = set(categories) - set(backend.CATEGORIES)
        if unknown or not categories:
            raise ValueError(f"bfcl categories must be among {backend.CATEGORIES}, got {list(categories)}")
        b = backend.bfcl()  # fails here, with the install command, when bfcl-eval is missing
        if max_steps_per_turn is None:
            max_steps_per_turn = b.prompts.MAXIMUM_STEP_LIMIT
        if max_turns < 1 or max_steps_per_turn < 1:
            raise ValueError(f"bfcl max_turns and max_steps_per_turn must be >= 1, got {max_turns}, {max_steps_per_turn}")
        if doc_format not in prompts.DOC_FORMATS:
            raise ValueError(f"bfcl doc_format must be one of {prompts.DOC_FORMATS}, got {doc_format!r}")
        for name, value in (("max_context_chars", max_context_chars), ("max_action_chars", max_action_chars),
                            ("max_result_chars", max_result_chars), ("max_step_chars", max_step_chars),
                            ("max_calls_per_step", max_calls_per_step)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"bfcl {name} must be an integer >= 1, got {value!r}")
        self.categories = categories
        self.ids = None if ids is None else tuple(ids)
        for entry_id in self.ids or ():
            if backend._category_of(entry_id) not in categories:
                raise ValueError(f"bfcl id {entry_id!r} is not in the chosen categories {list(categories)}")
        self.test_fraction = test_fraction
        self._train_ids = backend.split_ids(categories, "train", test_fraction, self.ids)
        self._test_ids = backend.split_ids(categories, "test", test_fraction, self.ids)
        if not self._train_ids and not self._test_ids:
            raise ValueError("bfcl: no entries selected")
        self.max_turns = max_turns
        self.max_steps_per_turn = max_steps_per_turn
        self.doc_format = doc_format
        self.max_context_chars = max_context_chars
        self.max_result_chars = max_result_chars
        self.max_step_chars = max_step_chars
        self.max_calls_per_step = max_calls_per_step
        self.partial_credit = partial_credit
        self.parse_error_penalty = parse_error_penalty
        self.render_mode = render_mode
        self.possible_agents = [f"turn_{k}" for k in range(max_turns)]
        self._action_space = AnyText(max_action_chars)
        # An observation within the budget grows by at most one step; an over-budget first
        # observation is still shown once (none of BFCL's is over FIRST_OBSERVATION_CHARS).
        # A step adds the response, then per call (at most max_calls_per_step) a
        # tool message named by the call's text, at most 5x its source ("1e15" prints as
        # "1000000000000000.0"), with a result cut to the step's budget or a marker.
        calls = min(max_action_chars // 3, max_calls_per_step)
        one_step = chat_bound(0, 1, 6 * max_action_chars + max_step_chars + calls * (MAX_MARKER_CHARS + MESSAGE_OVERHEAD))
        self._observation_space = AnyText(max(max_context_chars, FIRST_OBSERVATION_CHARS) + one_step)
        self._rng = np.random.default_rng()
        self._prefix = ""
        self.entry: backend.Entry | None = None

    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._observation_space

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._action_space

    def task_ids(self, split: str = "train") -> list[str]:
        """BFCL entry ids of ``split`` ("train" or "test")."""
        if split not in ("train", "test"):
            raise ValueError(f"bfcl has splits 'train' and 'test', got {split!r}")
        return list(self._train_ids if split == "train" else self._test_ids)

    # -- episode ------------------------------------------------------------------------

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._release()
        task_id = (options or {}).get("task_id")
        if task_id is None:
            pool = self._train_ids or self._test_ids
            task_id = pool[int(self._rng.integers(len(pool)))]
        self.entry = backend.get_entry(str(task_id))
        if self.entry.category not in self.categories:
            raise ValueError(f"bfcl entry {task_id!r} is not in the chosen categories {list(self.categories)}")
        # A fresh name per episode: bfcl caches backend instances in module globals under
        # it; they are dropped when the episode ends (and on reset/close).
        self._prefix = f"seeupo_{uuid.uuid4().hex}"
        self.functions = list(self.entry.entry["function"])
        # Every function of the entry may run, held-out ones included: bfcl's executor runs
        # them too, and its ground truth calls one before it is handed over (miss_func_49).
        self.allowed = {f["name"] for f in self.functions}
        self.allowed.update(f["name"] for docs in self.entry.missed_functions.values() for f in docs)
        self.user_turn = 0
        self.steps_in_turn = 0
        self.decoded: list[list[list[str]]] = [[] for _ in self.entry.ground_truth]
        self.parse_errors = 0
        self.messages = prompts.first_messages(self.entry.entry["question"][0], self.functions, self.entry.id, self.doc_format)
        self._observation: str | None = None
        self._over_budget = self._too_long()
        start_episode(self, {"task_id": self.entry.id, "category": self.entry.category})

    def observe(self, agent: str) -> TextObservation:
        if self._observation is None:
            self._observation = encode_messages(self.messages)
        return TextObservation(self._observation)

    def _too_long(self) -> bool:
        self._observation = None
        return len(self.observe("")) > self.max_context_chars

    def step(self, action: str | None) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        turn = self.possible_agents.index(agent)
        self._cumulative_rewards[agent] = 0.0
        self.rewards = {a: 0.0 for a in self.agents}
        end, error = None, None
        try:
            if self._over_budget:  # the first observation was already over the budget
                end = "context_limit"
            else:
                end = self._respond(as_text(action)[: self._action_space.max_length])
                if end is None and turn == self.max_turns - 1:
                    end = "max_turns"
                if end is None and self._too_long():
                    end = "context_limit"
            if end is not None:
                self._finish(turn, end)
        except Exception as e:  # a broken backend ends this episode (truncated), never the run
            error = f"{type(e).__name__}: {e}"
            self._finish(turn, "env_error", error)
        if end is None and error is None:
            self.agent_selection = self._agent_selector.next()
        self._accumulate_rewards()

    def _respond(self, text: str) -> str | None:
        """Apply one response; returns the end reason when the episode is over."""
        self.messages.append({"role": "assistant", "content": text})
        self._observation = None
        decoded = backend.decode_response(text, self.allowed, backend.signatures())
        if decoded.kind == "calls" and len(decoded.calls) > self.max_calls_per_step:
            decoded = backend.Decoded("error", error=f"at most {self.max_calls_per_step} calls per response, got {len(decoded.calls)}")
        if decoded.kind == "answer":
            return self._next_user_turn()
        if decoded.kind == "calls":
            calls = [str(c) for c in decoded.calls]
            results = [str(r) for r in backend.execute(calls, self.entry, self._prefix)]
            self.decoded[self.user_turn].append(calls)
            results = cap_results(results, self.max_result_chars, self.max_step_chars)
            self.messages.extend({"role": "tool", "name": c, "content": r} for c, r in zip(calls, results))
        else:
            self.parse_errors += 1
            self.messages.append({"role": "tool", "content": f"Error: {decoded.error}"})
        self.steps_in_turn += 1
        # BFCL's rule: the step after the limit-th forces the model to quit (entry failed).
        return "step_limit" if self.steps_in_turn > self.max_steps_per_turn else None

    def _next_user_turn(self) -> str | None:
        self.user_turn += 1
        self.steps_in_turn = 0
        if self.user_turn == len(self.entry.ground_truth):
            return "done"
        held_out = self.entry.missed_functions.get(self.user_turn)
        if held_out:
            self.functions.extend(held_out)
            self.messages.append(prompts.held_out_message(held_out, self.doc_format))
        else:
            self.messages.extend(dict(m) for m in self.entry.entry["question"][self.user_turn])
        return None

    def _score(self, end_reason: str) -> tuple[float, float]:
        """(success, partial credit) of the transcript."""
        if end_reason == "step_limit":  # BFCL fails a force-quit entry without checking
            return 0.0, 0.0
        success = float(backend.check(self.decoded, self.entry, self._prefix + "_check")["valid"])
        if success:
            return 1.0, 1.0
        passes = backend.turn_passes(self.decoded, self.entry, self._prefix + "_partial")
        return 0.0, (sum(passes) / len(passes) if passes else 0.0)

    def _finish(self, last_turn: int, end_reason: str, error: str | None = None) -> None:
        try:
            success, partial = (0.0, 0.0) if error else self._score(end_reason)
        finally:
            self._release()
        reward = (partial if self.partial_credit else success) - self.parse_error_penalty * self.parse_errors
        truncated = end_reason in ("max_turns", "context_limit", "env_error")
        summary = {
            "success": success,
            "partial_credit": partial,
            "parse_errors": self.parse_errors,
            "num_turns": last_turn + 1,
            "category": self.entry.category,
            "user_turns": len(self.entry.ground_truth),
            "user_turns_done": self.user_turn,
            "end_reason": end_reason,
        }
        if error:
            summary["env_error"] = error
        end_episode(self, last_turn, reward, summary, truncated=truncated)

    def _release(self) -> None:
        backend.purge_instances(self._prefix)
        self._prefix = ""

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return render_chat(self.messages)
        return None

    def close(self) -> None:
        self._release()


def ground_truth_response(env: raw_env) -> str:
    """A scripted policy replaying the entry's ground truth: the current user turn's calls
    in one list, then a short answer that ends the turn (used by tests and benchmarks)."""
    truth = env.entry.ground_truth[env.user_turn]
    if truth and not env.decoded[env.user_turn]:
        return "[" + ", ".join(truth) + "]"
    return "Done."


def env(**config: Any) -> raw_env:
    return raw_env(**config)
