"""``MicroBatchTorchLearner``: an RLlib ``TorchLearner`` whose optimizer step runs in
micro-batches within a token budget, with one gradient all-reduce per step across learners
(docs/design.md section 3.3). SeeUPO's learner adds its loss to it."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.typing import ModuleID, ParamDict

from rllib_seeupo.batching import consecutive_slices
from rllib_seeupo.columns import PROMPT_MASK, RESPONSE_MASK
from rllib_seeupo.timing import PhaseTimer

MINIBATCH_ROWS = "minibatch_rows"  # (B,) rows with a response in the whole minibatch, all learners' shards


class MicroBatchTorchLearner(TorchLearner):
    """One optimizer step per ``update`` call on this learner's shard of a minibatch, run in
    micro-batches of at most ``config.micro_batch_tokens`` prompt + response tokens whose
    gradients accumulate. A subclass weighs each micro-batch's loss (a mean over its rows)
    with ``loss_weight``: its share of the minibatch's rows over all learners
    (``MINIBATCH_ROWS``) times the number of learners, whose gradients DDP averages. The step
    is then the one of a single pass over the whole minibatch on one learner, however rows
    and tokens are split."""

    def build(self, **kwargs) -> None:
        super().build(**kwargs)
        self._timed = PhaseTimer()  # seconds per phase since the last `pop_phase_seconds()`

    def pop_phase_seconds(self) -> dict[str, float]:
        """Seconds spent since the last call in ``update_step`` (one whole optimizer step:
        forward, loss, backward, clipping, step), of which ``backward`` and ``optimizer_step``
        (gradient clipping and the optimizer's step)."""
        return self._timed.pop()

    def begin_step(self, batch: dict) -> None:
        """Called before a step's first micro-batch (subclasses reset their records)."""

    def end_step(self, gradients: ParamDict) -> None:
        """Called after the step's last backward pass, before the optimizer step."""

    def loss_weight(self, module_id: ModuleID, rows: float) -> float:
        """The factor of the loss of a micro-batch of ``rows`` rows with a response."""
        return rows / self._loss_denominator[module_id]

    def _uncompiled_update(self, batch: dict, **kwargs):
        with self._timed("update_step"):
            self._compute_off_policyness(batch)
            for optimizer in self._optimizer_parameters:
                optimizer.zero_grad(set_to_none=True)
            self._loss_denominator = {mid: _rows_denominator(columns) for mid, columns in batch.items()}
            self.begin_step(batch)
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
            gradients = {pid: p.grad for pid, p in self._params.items()}
            self.end_step(gradients)
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
            raise ValueError("micro_batch_tokens: the learner splits the batch of one shared module only")
        slices = consecutive_slices(row_tokens(columns).tolist(), budget)
        return [{module_id: {k: v[part] for k, v in columns.items()}} for part in slices]

    @contextlib.contextmanager
    def _ddp_no_sync(self, skip_sync: bool):
        with contextlib.ExitStack() as stack:
            if skip_sync and self.config.num_learners > 1:
                for module in self.module.values():
                    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
                        stack.enter_context(module.no_sync())
            yield

    def postprocess_gradients(self, gradients_dict: ParamDict) -> ParamDict:
        with self._timed("optimizer_step"):
            return super().postprocess_gradients(gradients_dict)

    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        with self._timed("optimizer_step"):
            super().apply_gradients(gradients_dict)

    @torch.no_grad()
    def compute_response_logp(self, module_id: ModuleID, columns: dict[str, np.ndarray]) -> np.ndarray:
        """``(B, L)`` log-probs of the response tokens under the current parameters, in
        micro-batches of at most ``micro_batch_tokens`` tokens."""
        module = self.module[module_id].unwrapped()
        batch = {k: torch.as_tensor(v, device=self._device) for k, v in columns.items() if v.dtype != object}
        budget = getattr(self.config, "micro_batch_tokens", None)
        parts = consecutive_slices(row_tokens(batch).tolist(), budget) if len(batch[RESPONSE_MASK]) else [slice(None)]
        return torch.cat([module.response_logp({k: v[part] for k, v in batch.items()}).float().cpu() for part in parts]).numpy()


def _rows_denominator(columns: dict) -> float:
    """The number that a micro-batch's row count is divided by to weigh its loss."""
    if MINIBATCH_ROWS in columns:
        return max(float(columns[MINIBATCH_ROWS][0]), 1.0) / world_size()
    return max(float(columns[RESPONSE_MASK].any(dim=-1).sum()), 1.0)


def row_tokens(columns: dict) -> torch.Tensor:
    """``(B,)`` prompt + response tokens of each row (at least one)."""
    tokens = columns[RESPONSE_MASK].sum(-1)
    if PROMPT_MASK in columns:
        tokens = tokens + columns[PROMPT_MASK].sum(-1)
    return tokens.clamp(min=1)


def world_size() -> int:
    """The number of learners that share each update (DDP's process group), else 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1
