"""How far one iteration's update moved the policy from the one that sampled the batch.

``policy_drift`` compares, per turn, the current weights with the rollout (behaviour)
policy on the batch's own responses. Under one shared set of weights, every turn update
moves every turn's responses, so these figures show what a schedule does to the trust
region that each turn's clip is meant to keep (``benchmarks/drift.py`` replays one batch
under several schedules).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rllib_seeupo import objectives
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK


def policy_drift(algo, rollouts: list, advantages: np.ndarray, clip: float | None = None) -> dict[str, dict[str, float]]:
    """Per turn (``turn_k``), against the rollout policy, on the batch's responses:

    - ``kl``: the k3 estimate of KL(pi_rollout || pi_now) (samples are the rollout
      policy's), token mean per response, mean over responses;
    - ``outside_clip``: the share of responses whose sequence ratio left [1 - clip, 1 + clip]
      (``clip``: the config's ``clip_param``);
    - ``max_token_log_ratio``: the largest |log pi_now - log pi_rollout| of any token;
    - ``advantage_sum`` and ``rows``: the turn's advantages summed (zero for a zero-sum
      batch) and its number of responses.

    Args:
        algo: a ``SeeUPO`` whose learner holds the weights to compare.
        rollouts, advantages: the batch that ``sample_rollouts`` returned, ``(N,)``.
    """
    clip = algo.config.clip_param if clip is None else clip
    module_class = algo.config.rl_module_spec.module_class
    out: dict[str, dict[str, Any]] = {}
    for k in sorted({k for r in rollouts for k in r.turns}):
        index = [i for i, r in enumerate(rollouts) if k in r.turns]
        columns = module_class.collate_turn_rows([rollouts[i].turns[k] for i in index])
        now = torch.as_tensor(algo.response_logp(columns))
        behaviour = torch.as_tensor(columns[BEHAVIOUR_LOGP])
        mask = torch.as_tensor(columns[RESPONSE_MASK])
        log_ratio = torch.where(mask, now - behaviour, torch.zeros_like(now))
        seq_ratio = torch.exp(objectives.sequence_log_ratio(now, behaviour, mask))
        rows = mask.any(dim=-1)
        kl = objectives.masked_mean(objectives.kl_k3(behaviour, now), mask, dim=-1)
        out[f"turn_{k}"] = {
            "kl": float(kl[rows].mean()),
            "outside_clip": float(((seq_ratio - 1).abs() > clip)[rows].float().mean()),
            "max_token_log_ratio": float(log_ratio.abs().max()),
            "advantage_sum": float(np.sum(advantages[index])),
            "rows": int(rows.sum()),
        }
    return out
