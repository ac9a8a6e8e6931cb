"""SeeUPO's math as pure torch functions, no Ray imports (docs/design.md section 1).

SeeUPO (Sequence-level Sequential Update Policy Optimization, arXiv 2602.06554) treats
turn k of a T-turn episode as virtual agent k. Every turn of rollout i shares the
rollout's reward R_i; advantages are group-relative over the n rollouts of one task
(GRAE: ``group_relative_advantages``); the turns are updated one after another in reverse
order (T-1 ... 0), each with a PPO-clip surrogate on GSPO's sequence-level (geometric-mean)
ratio, multiplied by HAPPO's compound factor M that carries the ratio change of the turns
updated before it (``policy_loss``, ``cumulative_compound_factor``).

Shapes: ``N`` rollouts, ``B`` rows (one row = one turn of one rollout), ``L`` response
tokens per row (padded; ``mask`` marks the real ones). A row whose mask is all False is a
padded or missing turn: it contributes nothing to any loss, gradient or denominator.
"""

from __future__ import annotations

import enum
from typing import Sequence

import torch


class AdvantageNorm(str, enum.Enum):
    """How group-centred rewards are scaled (``advantage_norm``)."""

    BATCH = "batch"  # one std over the batch's rollouts, then clip: the paper's and its release's
    NONE = "none"  # plain group-centred reward (GRAE)
    # GRPO (Shao et al. 2024), SeeUPO's default here (docs/design.md section 1.3); it breaks
    # the mirror-learning drift condition that one batch scale keeps.
    GROUP_STD = "group_std"
    LEAVE_ONE_OUT = "leave_one_out"  # RLOO (Ahmadian et al. 2024)


class RatioLevel(str, enum.Enum):
    SEQUENCE = "sequence"  # GSPO's geometric-mean ratio (Zheng et al. 2025)
    TOKEN = "token"  # PPO's per-token ratio (GRPO)


class UpdateOrder(str, enum.Enum):
    REVERSE = "reverse"  # T-1 ... 0: backward induction, SeeUPO's default
    FORWARD = "forward"
    RANDOM = "random"
    PARALLEL = "parallel"  # all turns in one update: the GRPO/GSPO baseline


class CompoundFactor(str, enum.Enum):
    STEPWISE = "stepwise"  # HAPPO's factor (Kuba et al. 2022), clipped at every step
    # The joint ratio of the turns updated before, current weights against the rollout
    # policy: under shared weights it also sees what later updates did to earlier turns.
    CUMULATIVE = "cumulative"
    NONE = "none"


class AdvantageClip(str, enum.Enum):
    """How ``batch`` advantages are bounded by ``clip`` (``advantage_clip_mode``)."""

    CLAMP = "clamp"  # clamp each advantage (the release): a rare success is cut, its failures are not
    # Scale each group whose largest |A| exceeds the bound down as a whole: every group's
    # advantages keep summing to zero (no net push on the sampled responses).
    SCALE_GROUP = "scale_group"  # SeeUPO's default


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True.

    Masked-out positions are replaced (not multiplied) by zero, so an ``inf`` or ``nan``
    at a padded position cannot leak into the result or its gradient. An empty mask gives
    0, not ``nan``.
    """
    mask = mask.bool()
    x = torch.where(mask, x, torch.zeros_like(x))
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)


def group_relative_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    norm: AdvantageNorm | str = AdvantageNorm.GROUP_STD,
    clip: float | None = 3.0,
    clip_mode: AdvantageClip | str = AdvantageClip.SCALE_GROUP,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages (GRAE) for N rollouts.

    ``A~_i = R_i - mean_{j in G(i)} R_j``, then by ``norm`` (the defaults are SeeUPOConfig's):
    - ``batch``: ``A~ / (std over the batch's rollouts of A~ + eps)``, bounded by ``clip``.
      One positive scalar for the whole batch keeps the mirror-learning drift condition
      that a per-group std breaks (SeeUPO, section 4). ``clip_mode="clamp"`` clamps each
      advantage to ``[-clip, clip]``, which breaks a group's zero sum when its rewards are
      skewed (one success in 8: +3.00 against 7 x -0.76 after the clamp); ``"scale_group"``
      multiplies a group by ``clip / max |A|`` when that is below 1, keeping the sum at 0.
    - ``none``: ``A~``.
    - ``group_std``: ``A~ / (std_{G(i)} R + eps)`` (GRPO). Each mixed group gets unit
      variance: a nearly solved task's group (7 of 8 right) pushes 0.66 times as hard as a
      half-solved one's, against 0.44 under one batch scale; it gives up the drift
      condition above.
    - ``leave_one_out``: ``R_i - mean_{j in G(i), j != i} R_j`` (RLOO).

    A rollout alone in its group gets advantage 0 in every mode.

    Args:
        rewards: ``(N,)`` one scalar reward per rollout (each rollout counted once, not
            once per turn).
        group_index: ``(N,)`` int64 in ``[0, num_groups)``: which task each rollout belongs to.
        clip: bound for ``batch`` mode; ``None`` or 0 disables it.
    Returns:
        ``(N,)`` advantages.
    """
    norm = AdvantageNorm(norm)
    rewards = rewards.to(torch.float64)
    num_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    counts = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_index, torch.ones_like(rewards))
    sums = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_index, rewards)
    n = counts[group_index]
    centred = rewards - sums[group_index] / n
    if norm == AdvantageNorm.NONE:
        advantages = centred
    elif norm == AdvantageNorm.BATCH:
        scale = centred.std(unbiased=False) if centred.numel() > 1 else centred.new_zeros(())
        advantages = centred / (scale + eps) if scale > 0 else torch.zeros_like(centred)
        if clip and AdvantageClip(clip_mode) == AdvantageClip.CLAMP:
            advantages = advantages.clamp(-clip, clip)
        elif clip:
            largest = torch.zeros(num_groups, dtype=torch.float64).scatter_reduce_(
                0, group_index, advantages.abs(), reduce="amax"
            )
            advantages = advantages * (clip / largest.clamp(min=clip))[group_index]
    elif norm == AdvantageNorm.GROUP_STD:
        sq = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_index, centred**2)
        # Unbiased per-group std, as in GRPO's reference implementations.
        group_std = (sq / (counts - 1).clamp(min=1)).sqrt()
        std = group_std[group_index]
        # A group whose rewards are all equal has zero centred rewards: keep them zero.
        advantages = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    else:  # leave-one-out: R_i - (S - R_i) / (n - 1) = n / (n - 1) * centred
        advantages = torch.where(n > 1, centred * n / (n - 1).clamp(min=1), torch.zeros_like(centred))
    return advantages.to(torch.float32)


def discounted_turn_returns(rewards: torch.Tensor, turns: torch.Tensor, last_turns: torch.Tensor, gamma: float) -> torch.Tensor:
    """Each turn's discounted return when an episode's one reward arrives after its last turn:
    ``R_t = gamma^(T_i - t) R_i`` (GiGPO, Feng et al. 2025, arXiv 2505.10978, Eq. 5, with a
    terminal reward).

    Args:
        rewards: ``(M,)`` the reward R_i of the episode each row belongs to.
        turns: ``(M,)`` the row's turn t; last_turns: ``(M,)`` its episode's last turn T_i.
    Returns:
        ``(M,)`` float32 returns.
    """
    exponent = (last_turns - turns).to(torch.float64)
    return (rewards.to(torch.float64) * gamma**exponent).to(torch.float32)


def gigpo_advantages(
    episode_advantages: torch.Tensor,
    turn_returns: torch.Tensor,
    anchor_group: torch.Tensor,
    *,
    weight: float = 1.0,
    norm: AdvantageNorm | str = AdvantageNorm.NONE,
) -> torch.Tensor:
    """GiGPO's advantage of each turn row: ``A = A^E + weight * A^S`` (Eq. 8), where ``A^S``
    compares the discounted returns of the rows that reached the same anchor state (the same
    observation at the same turn of the same task) across a group's rollouts (Eq. 7):
    ``group_relative_advantages`` over those anchor groups, unclipped. A row alone in its
    anchor group gets ``A^S = 0``, leaving its episode-level advantage.

    Args:
        episode_advantages: ``(M,)`` the episode-level advantage ``A^E`` of each row's rollout.
        turn_returns: ``(M,)`` each row's discounted return (``discounted_turn_returns``).
        anchor_group: ``(M,)`` int64 in ``[0, num_anchor_groups)``.
        weight: omega, the step-level term's weight (the paper's default 1).
        norm: ``none`` (F_norm = 1, the paper's default for agent tasks) or ``group_std``.
    Returns:
        ``(M,)`` float32 advantages.
    """
    step = group_relative_advantages(turn_returns, anchor_group, norm=norm, clip=None)
    return (episode_advantages.to(torch.float32) + weight * step).to(torch.float32)


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log of GSPO's sequence-level ratio: the mean over a response's tokens of
    ``log pi_theta - log pi_old``.

    Args:
        logp, old_logp: ``(B, L)`` per-token log-probs of the response tokens.
        mask: ``(B, L)`` True at real response tokens.
    Returns:
        ``(B,)`` ``log s_{i,k}``; 0 for a row with no tokens.
    """
    return masked_mean(logp - old_logp, mask, dim=-1)


def clipped_surrogate_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    compound_factor: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """HAPPO/PPO-clip loss per element: ``-min(s M A, clip(s, 1-eps, 1+eps) M A)``.

    ``ratio`` is ``(B,)`` (sequence level) or ``(B, L)`` (token level); ``advantages`` and
    ``compound_factor`` are ``(B,)`` and broadcast over tokens. Returns ``ratio``'s shape.
    """
    if ratio.dim() == 2:
        advantages = advantages[:, None]
        compound_factor = compound_factor[:, None]
    weighted = compound_factor * advantages
    return -torch.min(ratio * weighted, ratio.clamp(1.0 - clip, 1.0 + clip) * weighted)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token:
    ``exp(ref - logp) - (ref - logp) - 1`` (non-negative, unbiased). Shapes ``(B, L)``."""
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)
    return torch.exp(log_ratio) - log_ratio - 1.0


def cumulative_compound_factor(log_ratio_sum: torch.Tensor, clip: float) -> torch.Tensor:
    """HAPPO's factor read as the joint ratio of the turns updated before this one:
    ``M_k = clip(prod_{j updated} s_j(theta_current) / s_j(theta_rollout), 1-eps_M, 1+eps_M)``.

    Unlike the stepwise product (each factor measured around its own turn's update), the
    ratios are taken at the current weights against the rollout policy, so with one shared
    set of weights the drift that later updates caused on earlier turns' responses counts.

    Args:
        log_ratio_sum: ``(N,)`` per rollout, the sum over the turns updated so far of
            ``log s_j`` (current vs rollout); 0 for a rollout with no such turn.
    Returns:
        ``(N,)`` M.
    """
    return torch.exp(log_ratio_sum).clamp(1.0 - clip, 1.0 + clip)


def update_compound_factor(compound_factor: torch.Tensor, ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """HAPPO's factor after one turn's update:
    ``M <- clip(M * clip(rho, 1-eps_M, 1+eps_M), 1-eps_M, 1+eps_M)``.

    Args:
        compound_factor: ``(N,)`` M of each rollout before this turn's update.
        ratio: ``(N,)`` ``rho = s(theta_after) / s(theta_before)`` of this turn's response.
    Returns:
        ``(N,)`` the factor that the next turn to be updated multiplies its loss by.
    """
    lo, hi = 1.0 - clip, 1.0 + clip
    return (compound_factor * ratio.clamp(lo, hi)).clamp(lo, hi)


def policy_loss(
    *,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    compound_factor: torch.Tensor,
    ratio_level: RatioLevel | str = RatioLevel.SEQUENCE,
    clip: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    kl_coeff: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coeff: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One turn's loss ``L_k = -mean_i min(s M A, clip(s) M A) + beta KL_k3 - c_H H``.

    Token-level quantities (token ratio, KL, entropy) are averaged over a row's tokens,
    then over rows ("sequence mean of token means"), so a long response weighs as much as
    a short one. Rows whose mask is empty count nowhere.

    Args:
        logp: ``(B, L)`` log-probs of the response tokens under the current parameters.
        old_logp: ``(B, L)`` the same under pi_old (no gradient).
        mask: ``(B, L)`` True at real response tokens.
        advantages: ``(B,)``; compound_factor: ``(B,)``.
        ref_logp: ``(B, L)`` under the reference policy, needed when ``kl_coeff > 0``.
        entropy: ``(B, L)`` per-token policy entropy, needed when ``entropy_coeff != 0``.
    Returns:
        The scalar loss and a dict of detached statistics.
    """
    ratio_level = RatioLevel(ratio_level)
    mask = mask.bool()
    # Zero the padded positions first: a nan/inf there would otherwise reach the gradient
    # through exp() even though the masked mean discards its value (0 * nan = nan).
    logp, old_logp = (torch.where(mask, t, torch.zeros_like(t)) for t in (logp, old_logp))
    if ref_logp is not None:
        ref_logp = torch.where(mask, ref_logp, torch.zeros_like(ref_logp))
    if entropy is not None:
        entropy = torch.where(mask, entropy, torch.zeros_like(entropy))
    rows = mask.any(dim=-1)
    num_rows = rows.sum().clamp(min=1)

    def row_mean(per_row: torch.Tensor) -> torch.Tensor:
        return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / num_rows

    seq_ratio = torch.exp(sequence_log_ratio(logp, old_logp, mask))
    stats = {}
    if ratio_level == RatioLevel.SEQUENCE:
        surrogate = clipped_surrogate_loss(seq_ratio, advantages, compound_factor, clip)
    else:
        token_ratio = torch.exp(logp - old_logp)
        surrogate = masked_mean(clipped_surrogate_loss(token_ratio, advantages, compound_factor, clip), mask, dim=-1)
        # The share of a row's tokens whose ratio left the clip range, averaged over rows.
        stats["token_clip_fraction"] = row_mean(masked_mean(((token_ratio - 1.0).abs() > clip).float(), mask, dim=-1))
    loss = row_mean(surrogate)
    with torch.no_grad():
        stats |= {
            "policy_loss": loss,
            "ratio_mean": row_mean(seq_ratio),
            # At one level for every algorithm: the share of rows whose sequence ratio left
            # [1 - clip, 1 + clip].
            "clip_fraction": row_mean(((seq_ratio - 1.0).abs() > clip).float()),
            # k3 KL of the current policy from pi_old on the sampled responses (drift).
            "kl_old": row_mean(masked_mean(kl_k3(logp, old_logp), mask, dim=-1)),
        }
    stats = {k: v.detach() for k, v in stats.items()}
    if kl_coeff:
        if ref_logp is None:
            raise ValueError("policy_loss: kl_coeff > 0 needs ref_logp")
        kl = row_mean(masked_mean(kl_k3(logp, ref_logp), mask, dim=-1))
        loss = loss + kl_coeff * kl
        stats["kl"] = kl.detach()
    if entropy is not None:
        mean_entropy = row_mean(masked_mean(entropy, mask, dim=-1))
        if entropy_coeff:
            loss = loss - entropy_coeff * mean_entropy
        stats["entropy"] = mean_entropy.detach()
    stats["total_loss"] = loss.detach()
    return loss, stats


def update_schedule(order: UpdateOrder | str, turns: Sequence[int], rng=None) -> list[list[int]]:
    """The turn groups to update one after another.

    ``reverse`` -> ``[[T-1], ..., [0]]``; ``forward`` -> ``[[0], ..., [T-1]]``; ``random``
    -> a permutation drawn from ``rng`` (a ``numpy.random.Generator``); ``parallel`` ->
    ``[[0, ..., T-1]]`` (one update on every turn at once).
    """
    order = UpdateOrder(order)
    turns = sorted(set(int(t) for t in turns))
    if order == UpdateOrder.PARALLEL:
        return [turns] if turns else []
    if order == UpdateOrder.REVERSE:
        return [[t] for t in reversed(turns)]
    if order == UpdateOrder.FORWARD:
        return [[t] for t in turns]
    if rng is None:
        raise ValueError("update_schedule: order='random' needs rng")
    return [[turns[i]] for i in rng.permutation(len(turns))]
