"""What SeeUPO's learner needs from an RLModule, whatever the policy is (a table, an LLM).

A turn's action is a *response*: one token for a tabular policy, the whole generated text
for an LLM. The learner only ever sees per-token log-probs of response tokens plus a mask.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

from rllib_seeupo.columns import BEHAVIOUR_LOGP, RESPONSE_ENTROPY, RESPONSE_LOGP, RESPONSE_MASK  # noqa: F401


class TurnPolicyAPI(abc.ABC):
    """Implemented by RLModules that SeeUPO can train.

    ``_forward_train`` must return ``RESPONSE_LOGP`` (and may return ``RESPONSE_ENTROPY``)
    when the batch holds ``RESPONSE_MASK``.
    """

    @classmethod
    @abc.abstractmethod
    def collate_turn_rows(cls, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Stack per-turn rows into train-batch columns.

        Args:
            rows: one dict per (rollout, turn) with the turn's ``obs``, ``actions`` and the
                module's extra outputs recorded at sampling time (e.g. ``action_logp``).
        Returns:
            Columns with leading dimension B, including ``RESPONSE_MASK`` ``(B, L)`` and
            ``BEHAVIOUR_LOGP`` ``(B, L)``.
        """

    @abc.abstractmethod
    def response_logp(
        self, batch: dict[str, torch.Tensor], *, reference: bool = False
    ) -> torch.Tensor:
        """``(B, L)`` log-probs of the response tokens, under the current parameters or,
        with ``reference=True``, under the reference policy (the initial one)."""
