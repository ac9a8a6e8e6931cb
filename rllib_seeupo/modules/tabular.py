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

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.logits[batch[Columns.OBS].long()]}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        out = self._forward(batch)
        if RESPONSE_MASK in batch:
            log_probs = torch.log_softmax(out[Columns.ACTION_DIST_INPUTS], dim=-1)
            out[RESPONSE_LOGP] = log_probs.gather(-1, batch[Columns.ACTIONS].long()[:, None])
            out[RESPONSE_ENTROPY] = -(log_probs.exp() * log_probs).sum(-1, keepdim=True)
        return out

    def response_logp(self, batch: dict[str, torch.Tensor], *, reference: bool = False) -> torch.Tensor:
        table = self.reference_logits if reference else self.logits
        log_probs = torch.log_softmax(table[batch[Columns.OBS].long()], dim=-1)
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
            return torch.softmax(self.logits, dim=-1).cpu().numpy()
