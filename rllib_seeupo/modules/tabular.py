"""A tabular softmax policy (plus a value table for RLlib's PPO) over discrete states."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from rllib_seeupo.modules.api import (
    BEHAVIOUR_LOGP,
    RESPONSE_ENTROPY,
    RESPONSE_LOGP,
    RESPONSE_MASK,
    TurnPolicyAPI,
)


class TabularSoftmaxRLModule(TorchRLModule, ValueFunctionAPI, TurnPolicyAPI):
    """``pi(a | s) = softmax(logits[s])`` with one logit row per discrete state.

    The reference policy for the KL term is the initial table (a buffer, not a parameter).
    ``model_config``: ``init_scale`` (std of the initial logits, default 0: uniform).
    """

    def setup(self):
        num_states = self.observation_space.n
        num_actions = self.action_space.n
        init_scale = float(self.model_config.get("init_scale", 0.0))
        logits = torch.randn(num_states, num_actions) * init_scale
        self.logits = torch.nn.Parameter(logits)
        self.values = torch.nn.Parameter(torch.zeros(num_states))
        self.register_buffer("reference_logits", logits.clone())

    def state_logits(self, states: torch.Tensor) -> torch.Tensor:
        """``(B, num_actions)`` the logits at the ``(B,)`` state ids."""
        return self.logits[states]

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.state_logits(batch[Columns.OBS].long())}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        out = self._forward(batch)
        if RESPONSE_MASK in batch:
            log_probs = torch.log_softmax(out[Columns.ACTION_DIST_INPUTS], dim=-1)
            out[RESPONSE_LOGP] = log_probs.gather(-1, batch[Columns.ACTIONS].long()[:, None])
            out[RESPONSE_ENTROPY] = -(log_probs.exp() * log_probs).sum(-1, keepdim=True)
        return out

    def response_logp(self, batch: dict[str, torch.Tensor], *, reference: bool = False) -> torch.Tensor:
        states = batch[Columns.OBS].long()
        logits = self.reference_logits[states] if reference else self.state_logits(states)
        log_probs = torch.log_softmax(logits, dim=-1)
        return log_probs.gather(-1, batch[Columns.ACTIONS].long()[:, None])

    @classmethod
    def collate_turn_rows(cls, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {
            Columns.OBS: np.array([int(r[Columns.OBS]) for r in rows], dtype=np.int64),
            Columns.ACTIONS: np.array([int(r[Columns.ACTIONS]) for r in rows], dtype=np.int64),
            RESPONSE_MASK: np.ones((len(rows), 1), dtype=bool),
            BEHAVIOUR_LOGP: np.array([[float(r[Columns.ACTION_LOGP])] for r in rows], dtype=np.float32),
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        return self.values[batch[Columns.OBS].long()]

    def action_probabilities(self) -> np.ndarray:
        """``(num_states, num_actions)`` the current policy, for exact objectives."""
        with torch.no_grad():
            states = torch.arange(self.observation_space.n, device=self.reference_logits.device)
            return torch.softmax(self.state_logits(states), dim=-1).cpu().numpy()


class SharedMLPSoftmaxRLModule(TabularSoftmaxRLModule):
    """``pi(a | s) = softmax(W2 tanh(W1 phi(s) + b1) + b2)`` on the bandit, with ``phi(s)``
    the one-hot context, turn and history of state ``s`` (``BanditInstance.state_features``).

    The hidden layer is shared by every turn, so a turn's update moves the other turns'
    action probabilities too: the shared-weight case of one LLM serving every turn, in
    miniature, with J(pi) still exact. The last layer starts at zero (a uniform policy);
    the KL reference is the initial policy (a table, not a parameter).

    ``model_config``: ``bandit`` (the env's ``num_turns``, ``num_actions``,
    ``num_contexts`` and ``observation``), ``hidden`` (units, default 32).
    """

    def setup(self):
        from envs.bandit import make_instance

        spec = {k: v for k, v in dict(self.model_config.get("bandit") or {}).items()
                if k in ("num_turns", "num_actions", "num_contexts", "observation")}
        features = torch.as_tensor(make_instance(**spec).state_features())
        if features.shape[0] != self.observation_space.n:
            raise ValueError(
                f"SharedMLPSoftmaxRLModule: model_config.bandit {spec} describes {features.shape[0]} states, "
                f"the env has {self.observation_space.n}: give it the env's num_turns, num_actions, "
                "num_contexts and observation"
            )
        hidden = int(self.model_config.get("hidden", 32))
        self.register_buffer("features", features)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, self.action_space.n)
        )
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)
        self.values = torch.nn.Parameter(torch.zeros(self.observation_space.n))
        with torch.no_grad():
            self.register_buffer("reference_logits", self.net(features).clone())

    def state_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.net(self.features[states])
