"""``SeeUPOTorchLearner``: one turn's update, the loss from ``objectives.policy_loss``."""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any

import numpy as np
import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.typing import ModuleID, ParamDict

from rllib_seeupo import objectives
from rllib_seeupo.batching import consecutive_slices
from rllib_seeupo.columns import PROMPT_MASK, RESPONSE_ENTROPY, RESPONSE_LOGP, RESPONSE_MASK

# Columns the algorithm adds to each turn's batch.
ADVANTAGES = "advantages"  # (B,)
COMPOUND_FACTOR = "compound_factor"  # (B,) M of the row's rollout
OLD_LOGP = "old_logp"  # (B, L) log pi_old of the response tokens
TURN = "turn"  # (B,) turn index k of each row
MINIBATCH_ROWS = "minibatch_rows"  # (B,) rows with a response in the whole minibatch, all learners' shards


def turn_metrics_key(turns: torch.Tensor | np.ndarray) -> str:
    """``turn_3`` for a single-turn batch, ``all_turns`` for a parallel update."""
    unique = np.unique(np.asarray(turns.cpu() if isinstance(turns, torch.Tensor) else turns))
    return f"turn_{int(unique[0])}" if len(unique) == 1 else "all_turns"


class SeeUPOTorchLearner(TorchLearner):
    """Runs ``num_epochs_per_turn`` passes of the clipped, M-weighted surrogate on the
    rows of the turn(s) in the batch. The algorithm decides the order of the turns."""

    def build(self, **kwargs) -> None:
        super().build(**kwargs)
        for module_id in self.module.keys():
            # Modules that compute entropy only as a statistic skip its backward graph.
            self.module[module_id].unwrapped().entropy_grad = bool(self.config.entropy_coeff)
        # Seconds per phase of the updates since the last `pop_phase_seconds()`.
        self._phase_seconds: collections.Counter = collections.Counter()
        # The turn update under way (see begin_turn_update).
        self._turn_key: str | None = None
        self._target_kl: float | None = None
        self.turn_stopped = False
        self._per_turn_state = False
        self._turn_optimizer_states: dict[tuple[str, str], dict] = {}  # (turn key, optimizer name) -> state

    # -- one turn update: its optimizer state and its KL early stop -----------------------

    def begin_turn_update(self, turn_key: str, *, optimizer_state: str = "shared", target_kl: float | None = None) -> None:
        """Prepare the steps of one turn update (``turn_key``: ``turn_k`` or ``all_turns``).

        ``optimizer_state``: ``shared`` leaves the optimizer as it is; ``reset_first_moment``
        zeroes Adam's first moment (the direction carried from the last turn's steps);
        ``per_turn`` swaps in this turn's own optimizer state (empty the first time).
        ``target_kl``: once a minibatch's forward pass shows a k3 KL from pi_old above it,
        that step and every later one of this turn update are skipped (``turn_stopped``).
        """
        self._turn_key, self._target_kl, self.turn_stopped = turn_key, target_kl, False
        self._per_turn_state = optimizer_state == "per_turn"
        for name, optimizer in self._named_optimizers.items():
            if optimizer_state == "reset_first_moment":
                for state in optimizer.state.values():
                    if "exp_avg" in state:
                        state["exp_avg"].zero_()
            elif self._per_turn_state:
                optimizer.state = self._turn_optimizer_states.pop((turn_key, name), collections.defaultdict(dict))

    def end_turn_update(self) -> None:
        """Keep a ``per_turn`` optimizer state for the turn's next update."""
        if self._per_turn_state:
            for name, optimizer in self._named_optimizers.items():
                self._turn_optimizer_states[(self._turn_key, name)] = optimizer.state
                optimizer.state = collections.defaultdict(dict)
        self._turn_key, self._target_kl, self._per_turn_state = None, None, False

    @contextlib.contextmanager
    def _timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._phase_seconds[phase] += time.perf_counter() - start

    def pop_phase_seconds(self) -> dict[str, float]:
        """Seconds spent since the last call in ``update_step`` (one whole optimizer step:
        forward, loss, backward, clipping, step), of which ``backward`` and ``optimizer_step``
        (gradient clipping and the optimizer's step)."""
        seconds, self._phase_seconds = dict(self._phase_seconds), collections.Counter()
        return seconds

    def _uncompiled_update(self, batch: dict, **kwargs):
        """One optimizer step on ``batch`` (``{module_id: columns}``, this learner's shard of
        a minibatch), run in micro-batches of at most ``micro_batch_tokens`` tokens whose
        gradients accumulate. Each micro-batch's loss (a mean over its rows) is weighted by
        its share of the minibatch's rows over all learners (``MINIBATCH_ROWS``) times the
        number of learners, whose gradients DDP averages: the step is the one of a single
        pass over the whole minibatch on one learner, however rows and tokens are split."""
        with self._timed("update_step"):
            self._compute_off_policyness(batch)
            for optimizer in self._optimizer_parameters:
                optimizer.zero_grad(set_to_none=True)
            self._loss_stats = collections.defaultdict(list)  # module id -> [(stats, rows)]
            self._pre_step_logp = []
            self._loss_denominator = {mid: self._rows_denominator(columns) for mid, columns in batch.items()}
            parts = self._micro_batches(batch)
            for j, part in enumerate(parts):
                # DDP all-reduces the gradients once, in the last micro-batch's backward.
                with self._ddp_no_sync(j + 1 < len(parts)):
                    fwd_out = self.module.forward_train(part)
                    loss_per_module = self.compute_losses(fwd_out=fwd_out, batch=part)
                    total = sum(loss_per_module.values())
                    if isinstance(total, torch.Tensor) and total.grad_fn is not None:
                        with self._timed("backward"):
                            total.backward()
            self._log_loss_stats()
            gradients = {pid: p.grad for pid, p in self._params.items()}
            self._log_grad_norm(gradients)
            with self._ddp_no_sync(True):
                self.apply_gradients(self.postprocess_gradients(gradients))
        return fwd_out, loss_per_module, {}

    def _micro_batches(self, batch: dict) -> list[dict]:
        """``batch`` cut into consecutive rows of at most ``micro_batch_tokens`` tokens (prompt
        and response; rows without token columns count one)."""
        budget = getattr(self.config, "micro_batch_tokens", None)
        if budget is None:
            return [batch]
        (module_id, columns), *others = batch.items()
        if others:
            raise ValueError("micro_batch_tokens: SeeUPO's learner splits the batch of one shared module only")
        slices = consecutive_slices(_row_tokens(columns).tolist(), budget)
        return [{module_id: {k: v[part] for k, v in columns.items()}} for part in slices]

    def _rows_denominator(self, columns: dict) -> float:
        """The number that a micro-batch's row count is divided by to weigh its loss."""
        if MINIBATCH_ROWS in columns:
            return max(float(columns[MINIBATCH_ROWS][0]), 1.0) / _world_size()
        return max(float(columns[RESPONSE_MASK].any(dim=-1).sum()), 1.0)

    @contextlib.contextmanager
    def _ddp_no_sync(self, skip_sync: bool):
        with contextlib.ExitStack() as stack:
            if skip_sync and self.config.num_learners > 1:
                for module in self.module.values():
                    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
                        stack.enter_context(module.no_sync())
            yield

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
        self._metrics_key = self._turn_key or turn_metrics_key(batch[TURN])
        weight = rows / self._loss_denominator[module_id]
        return loss if weight == 1.0 else loss * weight

    def _log_loss_stats(self) -> None:
        """Log the minibatch's loss statistics: the row-weighted means over its micro-batches
        and, with several learners, over every learner's shard (all learners log the same
        figures); the turn's KL early stop is decided on them."""
        for module_id, parts in self._loss_stats.items():
            if len(parts) == 1 and _world_size() == 1:
                stats, rows = dict(parts[0][0]), parts[0][1]
            else:
                names = sorted(parts[0][0])
                totals = torch.tensor(
                    [[float(stats[n]) * rows for n in names] + [rows] for stats, rows in parts], dtype=torch.float64
                ).sum(0)
                if _world_size() > 1:
                    torch.distributed.all_reduce(totals)
                rows = float(totals[-1])
                stats = {n: torch.tensor(float(totals[i]) / max(rows, 1.0)) for i, n in enumerate(names)}
            if self._target_kl is not None and float(stats["kl_old"]) > self._target_kl:
                self.turn_stopped = True  # this step and the rest of the turn update are skipped
            stats["rows"] = torch.tensor(rows)
            stats["stopped"] = torch.tensor(float(self.turn_stopped))
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

    def postprocess_gradients(self, gradients_dict: ParamDict) -> ParamDict:
        with self._timed("optimizer_step"):
            return super().postprocess_gradients(gradients_dict)

    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        if self.turn_stopped:  # the turn's KL early stop: no step (Adam would move on zero grads)
            return
        with self._timed("optimizer_step"):
            super().apply_gradients(gradients_dict)

    def pre_step_response_logp(self) -> np.ndarray:
        """``(B, L)`` log-probs from the last update's forward pass (before its step)."""
        return torch.cat(self._pre_step_logp).float().cpu().numpy()

    @torch.no_grad()
    def compute_response_logp(self, module_id: ModuleID, columns: dict[str, np.ndarray]) -> np.ndarray:
        """``(B, L)`` log-probs of the response tokens under the current parameters, in
        micro-batches of at most ``micro_batch_tokens`` tokens."""
        module = self.module[module_id].unwrapped()
        batch = {
            k: torch.as_tensor(v, device=self._device) for k, v in columns.items() if v.dtype != object
        }
        budget = getattr(self.config, "micro_batch_tokens", None)
        parts = consecutive_slices(_row_tokens(batch).tolist(), budget) if len(batch[RESPONSE_MASK]) else [slice(None)]
        return torch.cat(
            [module.response_logp({k: v[part] for k, v in batch.items()}).float().cpu() for part in parts]
        ).numpy()


def _row_tokens(columns: dict) -> torch.Tensor:
    """``(B,)`` prompt + response tokens of each row (at least one)."""
    tokens = columns[RESPONSE_MASK].sum(-1)
    if PROMPT_MASK in columns:
        tokens = tokens + columns[PROMPT_MASK].sum(-1)
    return tokens.clamp(min=1)


def _world_size() -> int:
    """The number of learners that share each update (DDP's process group), else 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1
