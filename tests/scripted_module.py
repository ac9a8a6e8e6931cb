"""A text policy for tests: a softmax over a few scripted responses, trainable by SeeUPO.

``pi(c) = softmax(logits)[c]``; the text of choice c for an observation (a chat) is
``script(messages, c)``. The learner sees one "token" per response, the choice, so the
whole SeeUPO path (rollouts over a text env, GRAE, turn updates, M, weight sync) runs
without a language model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule

from envs.text import decode_messages
from rllib_seeupo.experiment import import_object
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_ENTROPY, RESPONSE_LOGP, RESPONSE_MASK, TurnPolicyAPI

CHOICE = "choice"


class ScriptedChoiceRLModule(TorchRLModule, TurnPolicyAPI):
    """``model_config``: ``script`` (dotted path of ``(messages, choice) -> text``) and
    ``init_logits`` (one per choice; the KL reference is this initial policy)."""

    def setup(self):
        self.script = import_object(self.model_config["script"])
        init = torch.tensor(self.model_config.get("init_logits", [0.0, 0.0]), dtype=torch.float32)
        self.logits = torch.nn.Parameter(init.clone())
        self.register_buffer("reference_logits", init.clone())

    def _act(self, batch: dict[str, Any], *, sample: bool) -> dict[str, Any]:
        observations = list(batch[Columns.OBS])
        logp = torch.log_softmax(self.logits.detach(), dim=-1)
        if sample:
            choices = torch.multinomial(logp.exp(), len(observations), replacement=True)
        else:
            choices = torch.full((len(observations),), int(logp.argmax()))
        actions = np.empty(len(observations), dtype=object)
        for i, (obs, c) in enumerate(zip(observations, choices.tolist())):
            actions[i] = self.script(decode_messages(obs), c)
        return {Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp[choices].numpy(), CHOICE: choices.numpy()}

    def _forward_exploration(self, batch, **kwargs):
        return self._act(batch, sample=True)

    def _forward_inference(self, batch, **kwargs):
        return self._act(batch, sample=False)

    def _forward_train(self, batch, **kwargs):
        logp = torch.log_softmax(self.logits, dim=-1)
        return {
            RESPONSE_LOGP: logp[batch[CHOICE].long()][:, None],
            RESPONSE_ENTROPY: -(logp.exp() * logp).sum().expand(len(batch[CHOICE]))[:, None],
        }

    def response_logp(self, batch, *, reference: bool = False) -> torch.Tensor:
        table = self.reference_logits if reference else self.logits
        return torch.log_softmax(table, dim=-1)[batch[CHOICE].long()][:, None]

    @classmethod
    def collate_turn_rows(cls, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {
            CHOICE: np.array([int(r[CHOICE]) for r in rows], dtype=np.int64),
            RESPONSE_MASK: np.ones((len(rows), 1), dtype=bool),
            BEHAVIOUR_LOGP: np.array([[float(r[Columns.ACTION_LOGP])] for r in rows], dtype=np.float32),
        }


_TEST_TASKS: dict[str, Any] = {}


def tool_tasks_oracle(messages: list[dict[str, str]], choice: int) -> str:
    """A ``script`` for the embedded env's held-out tasks: choice 0 plays the env's oracle
    for the first test task with this request (a few requests repeat, so most tasks are
    solved, deterministically), choice 1 answers nonsense (never solved)."""
    from envs.tool_tasks import make_task, oracle_response
    from envs.tool_tasks.tool_tasks import TEST_OFFSET

    if choice != 0:
        return "I am not sure."
    if not _TEST_TASKS:
        for task_id in range(TEST_OFFSET, TEST_OFFSET + 200):
            task = make_task(task_id)
            _TEST_TASKS.setdefault(task.request, task)
    task = _TEST_TASKS.get(messages[1]["content"])
    return oracle_response(task, messages) if task is not None else "I am not sure."
