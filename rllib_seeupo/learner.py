"""``SeeUPOTorchLearner``: one optimizer step of a turn update, the loss from
``objectives.policy_loss`` (docs/design.md section 3.3)."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import torch
from ray.rllib.utils.typing import ModuleID, ParamDict

from rllib_seeupo import objectives
from rllib_seeupo.columns import RESPONSE_ENTROPY, RESPONSE_LOGP, RESPONSE_MASK
from rllib_seeupo.micro_batch_learner import MicroBatchTorchLearner, world_size

# Columns the algorithm adds to each turn's batch.
ADVANTAGES = "advantages"  # (B,)
COMPOUND_FACTOR = "compound_factor"  # (B,) M of the row's rollout
OLD_LOGP = "old_logp"  # (B, L) log pi_old of the response tokens
TURN = "turn"  # (B,) the turn k that the row's update trains; -1 in a parallel update (all turns)


def turn_metrics_key(turns: torch.Tensor | np.ndarray) -> str:
    """``turn_3`` for a row of turn 3's update, ``all_turns`` for a parallel update."""
    turn = int(np.asarray(turns.cpu() if isinstance(turns, torch.Tensor) else turns).reshape(-1)[0])
    return "all_turns" if turn < 0 else f"turn_{turn}"


class SeeUPOTorchLearner(MicroBatchTorchLearner):
    """One optimizer step of the clipped, M-weighted surrogate per ``update`` call, on the
    rows of one turn update's minibatch. The algorithm decides the turns' order and M."""

    def build(self, **kwargs) -> None:
        super().build(**kwargs)
        for module_id in self.module.keys():
            # Modules that compute entropy only as a statistic skip its backward graph.
            self.module[module_id].unwrapped().entropy_grad = bool(self.config.entropy_coeff)

    def begin_step(self, batch: dict) -> None:
        self._loss_stats = collections.defaultdict(list)  # module id -> [(stats, rows)] per micro-batch
        self._pre_step_logp = []

    def end_step(self, gradients: ParamDict) -> None:
        self._log_loss_stats()
        self._log_grad_norm(gradients)

    def compute_loss_for_module(
        self,
        *,
        module_id: ModuleID,
        config: Any,
        batch: dict[str, Any],
        fwd_out: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        ref_logp = None
        if config.kl_coeff:
            with torch.no_grad():
                ref_logp = module.response_logp(batch, reference=True)
        logp = fwd_out[RESPONSE_LOGP]
        # Kept for the algorithm: with a single full-batch step this *is* log pi_old.
        self._pre_step_logp.append(logp.detach())
        loss, stats = objectives.policy_loss(
            logp=logp,
            # Without the column, pi_old is the weights this forward pass ran with.
            old_logp=batch[OLD_LOGP] if OLD_LOGP in batch else logp.detach(),
            mask=batch[RESPONSE_MASK],
            advantages=batch[ADVANTAGES],
            compound_factor=batch[COMPOUND_FACTOR],
            ratio_level=config.ratio_level,
            clip=config.clip_param,
            ref_logp=ref_logp,
            kl_coeff=config.kl_coeff,
            entropy=fwd_out.get(RESPONSE_ENTROPY),
            entropy_coeff=config.entropy_coeff,
        )
        rows = float(batch[RESPONSE_MASK].any(dim=-1).sum())
        self._loss_stats[module_id].append((stats, rows))
        self._metrics_key = turn_metrics_key(batch[TURN])
        weight = self.loss_weight(module_id, rows)
        return loss if weight == 1.0 else loss * weight

    def _log_loss_stats(self) -> None:
        """Log the minibatch's loss statistics: the row-weighted means over its micro-batches
        and, with several learners, over every learner's shard (all learners log the same
        figures)."""
        for module_id, parts in self._loss_stats.items():
            if len(parts) == 1 and world_size() == 1:
                stats, rows = dict(parts[0][0]), parts[0][1]
            else:
                names = sorted(parts[0][0])
                totals = torch.tensor(
                    [[float(stats[n]) * rows for n in names] + [rows] for stats, rows in parts], dtype=torch.float64
                ).sum(0)
                if world_size() > 1:
                    torch.distributed.all_reduce(totals)
                rows = float(totals[-1])
                stats = {n: torch.tensor(float(totals[i]) / max(rows, 1.0)) for i, n in enumerate(names)}
            stats["rows"] = torch.tensor(rows)
            self.metrics.log_dict(stats, key=(module_id, self._metrics_key), window=1)
            self.metrics.log_dict(
                {k: stats[k] for k in ("policy_loss", "ratio_mean", "clip_fraction")}, key=module_id, window=1
            )

    def _log_grad_norm(self, gradients: ParamDict) -> None:
        norms = [g.detach().norm() for g in gradients.values() if g is not None]
        if norms:
            grad_norm = torch.linalg.vector_norm(torch.stack(norms))
            for module_id in self._loss_stats:
                self.metrics.log_value((module_id, self._metrics_key, "grad_norm"), grad_norm, window=1)

    def pre_step_response_logp(self) -> np.ndarray:
        """``(B, L)`` log-probs from the last update's forward pass (before its step)."""
        return torch.cat(self._pre_step_logp).float().cpu().numpy()
