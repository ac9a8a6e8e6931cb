"""Your own env in ten minutes: a small turn-as-agent text env, registered with
``rllib_seeupo.register_turn_env`` and trained with SeeUPO, held-out success before and after.

The env, "lockers": the user asks for the code in locker N; the model calls
``[open_locker(number=N)]``, reads the code from the tool's reply and calls
``[answer(code="...")]``. Codes are random per task, so a policy that ignores the tool's
reply never succeeds: the second turn depends on what the first one returned.

    python examples/custom_env.py [--model smollm2-135m-instruct] [--iterations 4]

It shows the API, not a result: with SmolLM2-135M it runs end to end but solves none of 50
test tasks, before or after 3 iterations (2026-12-03, 2.5 min on 2 CPU cores; like the embedded
env's dependent levels, the small model does not carry a tool's reply into its next call).
``--model`` takes a larger model's folder.

What an env does to be trained here (the protocol, docs/design.md section 4.1):
- it is a PettingZoo ``AECEnv`` whose agents ``turn_0 .. turn_{T-1}`` are the turns of an
  episode; ``reset(options={"task_id": i})`` starts task ``i`` and ``infos[agent]["task_id"]``
  reports it (SeeUPO groups the rollouts of one task by it);
- ``task_ids(split)`` returns the task ids of ``"train"``, ``"validation"`` and ``"test"``
  (any sequence; a ``range`` is fine) and raises ``ValueError`` for another split;
- observations are the chat so far, ``encode_messages(messages)`` (what the LLM module
  renders with the model's chat template), actions the model's text;
- when the episode ends, every turn that acted gets the one episode reward
  (``envs.turns.end_episode``); ``infos["success"]`` feeds the success figures.
It imports nothing from RLlib and nothing of a model.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import gymnasium
import numpy as np
from pettingzoo import AECEnv

from envs.text import AnyText, CallSyntaxError, TextObservation, as_text, encode_messages, parse_calls
from envs.turns import end_episode, start_episode

SPLITS = {"train": range(0, 100_000), "validation": range(100_000, 100_100), "test": range(200_000, 200_100)}
SYSTEM = """Functions:
open_locker(number): the code in a locker
answer(code): your answer
Reply with a call list like [f(a=1)].
User: What is the code in locker 3?
Assistant: [open_locker(number=3)]
Tool: BADE
Assistant: [answer(code="BADE")]"""


class LockerEnv(AECEnv):
    metadata = {"name": "lockers_v0", "render_modes": [], "is_parallelizable": False}

    def __init__(self, max_turns: int = 3):
        super().__init__()
        if max_turns < 2:
            raise ValueError(f"lockers max_turns must be >= 2 (look up, then answer), got {max_turns}")
        self.max_turns = max_turns
        self.possible_agents = [f"turn_{k}" for k in range(max_turns)]
        self._observation_space, self._action_space = AnyText(8_000), AnyText(400)

    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._observation_space

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._action_space

    def task_ids(self, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"lockers has splits {sorted(SPLITS)}, got {split!r}")
        return SPLITS[split]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        task_id = int((options or {}).get("task_id", 0))
        rng = np.random.default_rng(task_id)
        self.locker, self.code = int(rng.integers(1, 100)), "".join(rng.choice(list("ABCDEFGH"), size=4))
        self.messages = [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"What is the code in locker {self.locker}?"}]
        start_episode(self, {"task_id": task_id})

    def observe(self, agent: str) -> TextObservation:
        return TextObservation(encode_messages(self.messages))

    def _run(self, text: str) -> tuple[str, str | None]:
        """The tool's reply to a response, and the answer it gave (None if none)."""
        try:
            calls = parse_calls(text, {"open_locker", "answer"})
        except CallSyntaxError as error:
            return f"Error: {error}", None
        for call in calls:
            if call.name == "answer":
                return "done", str(call.kwargs.get("code", ""))
            number = call.kwargs.get("number")
            return (self.code, None) if number == self.locker else (f"Error: locker {number!r} is not yours", None)
        return "Error: empty call list", None

    def step(self, action: str | None) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        text = as_text(action)[: self._action_space.max_length]
        reply, answer = self._run(text)
        self.messages += [{"role": "assistant", "content": text}, {"role": "tool", "content": reply}]
        self._cumulative_rewards[agent] = 0.0
        self.rewards = {a: 0.0 for a in self.agents}
        turn = self.possible_agents.index(agent)
        if answer is not None or turn == self.max_turns - 1:
            success = float(answer == self.code)
            end_episode(self, turn, success, {"success": success})
        else:
            self.agent_selection = self._agent_selector.next()
        self._accumulate_rewards()


def env(max_turns: int = 3) -> LockerEnv:
    """The function ``register_turn_env`` takes: ``env(**env_config)`` (its parameters are the
    env's settings, checked before a run starts)."""
    return LockerEnv(max_turns=max_turns)


def lockers_config(model: str = "smollm2-135m-instruct", *, num_eval_tasks: int = 100, **training):
    """SeeUPO with LoRA on ``model`` for the lockers env, held-out success on ``test``
    before training and after every iteration."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_seeupo import SeeUPOConfig, held_out_evaluation, register_turn_env
    from rllib_seeupo.llm.module import LLMRLModule

    register_turn_env("lockers", env)
    config = (
        SeeUPOConfig()
        .environment("seeupo/lockers", env_config={"max_turns": 3})
        .env_runners(num_envs_per_env_runner=16)
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=LLMRLModule),
            model_config={"model": model, "lora": {"rank": 16, "alpha": 32}, "max_new_tokens": 24, "temperature": 0.7,
                          "response_prefix": "[", "stop_strings": ["]"]},
        )
        .training(**{"group_size": 8, "tasks_per_iteration": 2, "lr": 1e-4, "kl_coeff": 0.0, "minibatch_size": 8, **training})
        .debugging(seed=0)
    )
    return held_out_evaluation(config, num_tasks=num_eval_tasks, batch_size=num_eval_tasks, progress=False)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a packaged alias or a model folder")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--eval-tasks", type=int, default=100, help="test tasks measured before and after")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user Ray session
    import ray

    ray.init(ignore_reinit_error=True, include_dashboard=False)
    algo = lockers_config(args.model, num_eval_tasks=args.eval_tasks).build_algo()
    try:
        for _ in range(args.iterations):
            result = algo.train()
            if result["training_iteration"] == 1:  # the measurement at build time comes with the first result
                before = result["evaluation_before"]["success_rate"]
                print(f"held-out success before training: {before:.3f}")
            print(f"iteration {result['training_iteration']}: rollout success {result['rollouts']['success_rate']:.3f}, "
                  f"held-out success {result['evaluation']['success_rate']:.3f}")
        return {"before": before, "after": result["evaluation"]["success_rate"]}
    finally:
        algo.stop()


if __name__ == "__main__":
    main()
