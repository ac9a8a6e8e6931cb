"""The pure math of ``rllib_seeupo.objectives`` against hand-computed numbers."""

import math

import numpy as np
import pytest
import torch

from rllib_seeupo import objectives as O


def test_group_centred_advantages_by_hand_and_sum_to_zero_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = O.group_relative_advantages(rewards, groups, norm="none")
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))
    for g in (0, 1):
        assert abs(float(adv[groups == g].sum())) < 1e-6


def test_batch_norm_by_hand():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    # centred: [.5, -.5, 1, -1]; population std = sqrt((.25+.25+1+1)/4) = sqrt(.625)
    adv = O.group_relative_advantages(rewards, groups, norm="batch", clip=None, eps=0.0)
    expected = torch.tensor([0.5, -0.5, 1.0, -1.0]) / math.sqrt(0.625)
    assert torch.allclose(adv, expected, atol=1e-6)
    clipped = O.group_relative_advantages(rewards, groups, norm="batch", clip=1.0, clip_mode="clamp", eps=0.0)
    assert torch.allclose(clipped, expected.clamp(-1, 1), atol=1e-6)


def test_batch_norm_is_invariant_to_positive_reward_scale_and_shift_per_group():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(32, generator=gen)
    groups = torch.arange(32) // 8
    base = O.group_relative_advantages(rewards, groups, norm="batch", eps=0.0)
    for scale in (0.01, 7.0, 1e3):
        assert torch.allclose(O.group_relative_advantages(rewards * scale, groups, norm="batch", eps=0.0), base, atol=1e-5)
    # ... but `none` is not: it keeps the reward's unit.
    assert not torch.allclose(O.group_relative_advantages(rewards * 7, groups, norm="none"), O.group_relative_advantages(rewards, groups, norm="none"))


def test_group_std_and_leave_one_out_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    # group 0: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    adv = O.group_relative_advantages(rewards, groups, norm="group_std", eps=0.0)
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / s, atol=1e-6)
    assert torch.all(adv[3:] == 0)
    loo = O.group_relative_advantages(rewards, groups, norm="leave_one_out")
    # R_i - mean of the others: 1 - 0, 0 - 0.5, 0 - 0.5
    assert torch.allclose(loo, torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0]))


def test_lone_rollout_gets_zero_advantage_in_every_mode():
    rewards = torch.tensor([5.0, 1.0, 2.0])
    groups = torch.tensor([0, 1, 1])
    for norm in O.AdvantageNorm:
        assert float(O.group_relative_advantages(rewards, groups, norm=norm)[0]) == 0.0


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError):
        O.group_relative_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), norm="per_group")


def test_sequence_ratio_is_the_geometric_mean_of_token_ratios():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    old = torch.tensor([[-1.5, -1.0, -9.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    log_s = O.sequence_log_ratio(logp, old, mask)
    assert torch.allclose(log_s, torch.tensor([(0.5 - 1.0) / 2, 0.5]))
    token_ratios = torch.exp(logp - old)
    assert torch.allclose(torch.exp(log_s[0]), torch.sqrt(token_ratios[0, 0] * token_ratios[0, 1]))


def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    m = torch.tensor([1.0, 1.0, 2.0, 0.5])
    loss = O.clipped_surrogate_loss(ratio, adv, m, clip=0.2)
    # -min(sMA, clip(s)MA): [-min(1.5,1.2), -min(-1.5,-1.2), -min(1.0,1.6), -min(-.25,-.4)]
    assert torch.allclose(loss, torch.tensor([-1.2, 1.5, -1.0, 0.4]))


def test_k3_kl_by_hand_and_zero_at_equality():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.0]])
    kl = O.kl_k3(logp, ref)
    assert torch.allclose(kl, torch.tensor([[0.0, math.e - 1 - 1]]))


def test_compound_factor_update_by_hand():
    m = torch.tensor([1.0, 1.1, 0.9, 1.0])
    rho = torch.tensor([1.1, 1.5, 0.5, 0.9])
    new = O.update_compound_factor(m, rho, clip=0.2)
    # [1.1, clip(1.1*1.2)=1.2, clip(.9*.8)=.8, .9]
    assert torch.allclose(new, torch.tensor([1.1, 1.2, 0.8, 0.9]))


def _loss_inputs(num_rows=4, length=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(num_rows, length, generator=gen)).requires_grad_(True)
    old = -torch.rand(num_rows, length, generator=gen)
    ref = -torch.rand(num_rows, length, generator=gen)
    mask = torch.rand(num_rows, length, generator=gen) > 0.3
    mask[:, 0] = True
    adv = torch.randn(num_rows, generator=gen)
    m = 0.8 + 0.4 * torch.rand(num_rows, generator=gen)
    ent = torch.rand(num_rows, length, generator=gen)
    return logp, old, ref, mask, adv, m, ent


@pytest.mark.parametrize("ratio_level", ["sequence", "token"])
def test_padded_or_missing_turn_contributes_exactly_zero(ratio_level):
    logp, old, ref, mask, adv, m, ent = _loss_inputs()
    kwargs = dict(ratio_level=ratio_level, clip=0.2, kl_coeff=0.1, entropy_coeff=0.01)
    loss, stats = O.policy_loss(logp=logp, old_logp=old, mask=mask, advantages=adv, compound_factor=m, ref_logp=ref, entropy=ent, **kwargs)
    (grad,) = torch.autograd.grad(loss, logp)

    # The same rows plus a missing turn (empty mask) whose values are garbage, and padding
    # columns with garbage: nothing may change, in the loss, its gradient or any statistic.
    logp2 = torch.cat([logp.detach(), torch.full((1, 5), float("nan"))]).requires_grad_(True)
    pad = torch.full((5, 2), float("inf"))
    logp2_padded = torch.cat([logp2, -pad], dim=1)
    old2 = torch.cat([torch.cat([old, torch.full((1, 5), 7.0)]), pad], dim=1)
    ref2 = torch.cat([torch.cat([ref, torch.full((1, 5), -7.0)]), pad], dim=1)
    mask2 = torch.cat([torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)]), torch.zeros(5, 2, dtype=torch.bool)], dim=1)
    ent2 = torch.cat([torch.cat([ent, torch.full((1, 5), 9.0)]), pad], dim=1)
    loss2, stats2 = O.policy_loss(
        logp=logp2_padded, old_logp=old2, mask=mask2, advantages=torch.cat([adv, torch.tensor([100.0])]),
        compound_factor=torch.cat([m, torch.tensor([1.2])]), ref_logp=ref2, entropy=ent2, **kwargs,
    )
    (grad2,) = torch.autograd.grad(loss2, logp2)
    assert torch.allclose(loss, loss2)
    assert torch.allclose(grad, grad2[:4])
    assert torch.all(grad2[4] == 0)
    for key in stats:
        assert torch.allclose(stats[key], stats2[key]), key


def test_policy_loss_by_hand_single_row():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = O.policy_loss(logp=logp, old_logp=old, mask=mask, advantages=torch.tensor([2.0]), compound_factor=torch.tensor([1.1]))
    assert torch.allclose(loss, torch.tensor(-2.2))  # -(s=1) * M * A
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp_t of -exp(mean(logp - old)) M A = -M A / L at s = 1
    assert torch.allclose(grad, torch.full((1, 2), -1.1))
    assert float(stats["ratio_mean"]) == 1.0 and float(stats["clip_fraction"]) == 0.0


def test_kl_needs_reference():
    logp, old, _, mask, adv, m, _ = _loss_inputs()
    with pytest.raises(ValueError, match="ref_logp"):
        O.policy_loss(logp=logp, old_logp=old, mask=mask, advantages=adv, compound_factor=m, kl_coeff=0.1)


def test_update_schedules():
    assert O.update_schedule("reverse", [0, 2, 1]) == [[2], [1], [0]]
    assert O.update_schedule("forward", [1, 0]) == [[0], [1]]
    assert O.update_schedule("parallel", [1, 0, 2]) == [[0, 1, 2]]
    random = O.update_schedule("random", range(5), np.random.default_rng(0))
    assert sorted(t[0] for t in random) == list(range(5))
    with pytest.raises(ValueError):
        O.update_schedule("sideways", [0])
