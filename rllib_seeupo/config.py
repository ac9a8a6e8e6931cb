"""``SeeUPOConfig``: RLlib-style fluent configuration for SeeUPO and its baselines."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_seeupo.objectives import AdvantageClip, AdvantageNorm, CompoundFactor, RatioLevel, UpdateOrder
from rllib_seeupo.turn_env import SHARED_MODULE_ID, shared_module_mapping

if TYPE_CHECKING:
    from ray.rllib.core.learner.learner import Learner

OLD_POLICY_SOURCES = ("current", "rollout")


class SeeUPOConfig(AlgorithmConfig):
    """Configuration for SeeUPO (arXiv 2602.06554).

    .. code-block:: python

        from rllib_seeupo import SeeUPOConfig

        config = (
            SeeUPOConfig()
            .environment("seeupo/bandit", env_config={"num_turns": 4})
            .training(group_size=8, tasks_per_iteration=8, lr=0.05)
        )
        algo = config.build_algo()
        print(algo.train()["learners"])
    """

    def __init__(self, algo_class=None):
        from rllib_seeupo.algorithm import SeeUPO

        super().__init__(algo_class=algo_class or SeeUPO)
        # SeeUPO defaults (docs/design.md section 1).
        self.group_size = 8
        self.tasks_per_iteration = 8
        self.update_order = UpdateOrder.REVERSE.value
        # GRPO's per-group std, not the paper's one batch-wide scale: under that scale a
        # nearly solved task's group (7 of 8 right) pushes 0.44 times as hard as a half-solved
        # one's (0.66 with the group std), and on shared LLM weights the rare kind of task was
        # forgotten (docs/RESULTS.md section 2: 0 collapses in 5 seeds against 1; on the
        # one-context shared-weight bandit, where a batch is one group, the two end the same on
        # all 40 seeds; with 8 contexts the batch scale is ahead by 0.030 +- 0.020, section 3). It gives up
        # the batch scale's place in the paper's improvement argument.
        self.advantage_norm = AdvantageNorm.GROUP_STD.value
        self.advantage_clip = 3.0
        # One LLM serves every turn, so a turn's update also moves the others' responses
        # (docs/design.md section 1.4): a zero-sum clip, every turn anchored at the rollout
        # policy with the joint (cumulative) compound factor, and no step without signal.
        # `tuned_examples/*_seeupo_release*.yaml` has the release's rule (clamp, current,
        # stepwise, a step every turn).
        self.advantage_clip_mode = AdvantageClip.SCALE_GROUP.value
        self.ratio_level = RatioLevel.SEQUENCE.value
        self.clip_param = 0.2
        self.compound_factor = CompoundFactor.CUMULATIVE.value
        self.compound_clip = 0.2
        self.kl_coeff = 0.002
        self.entropy_coeff = 0.0
        self.num_epochs_per_turn = 1
        self.minibatch_size = None
        self.micro_batch_tokens = None
        self.step_advantage_weight = 0.0
        self.step_discount = 0.95
        self.old_policy = "rollout"
        self.max_turns = None
        self.skip_zero_advantage_updates = True
        self.lr = 1e-5
        self.shuffle_batch_per_epoch = True
        # Rollouts: whole episodes, one shared module for every turn agent.
        self.batch_mode = "complete_episodes"
        # RLlib re-converts every finished episode after each env step when this is on
        # (quadratic in episodes per sample); the learner batches are built by hand anyway.
        self.episodes_to_numpy = False
        self.num_env_runners = 0
        self.policies = {SHARED_MODULE_ID}
        self.policy_mapping_fn = shared_module_mapping
        # The reference/value parts of a module get no gradient from every loss.
        self.torch_ddp_kwargs = {"find_unused_parameters": True}

    def training(
        self,
        *,
        group_size: int = NotProvided,
        tasks_per_iteration: int = NotProvided,
        update_order: str = NotProvided,
        advantage_norm: str = NotProvided,
        advantage_clip: float | None = NotProvided,
        advantage_clip_mode: str = NotProvided,
        ratio_level: str = NotProvided,
        clip_param: float = NotProvided,
        compound_factor: str = NotProvided,
        compound_clip: float = NotProvided,
        kl_coeff: float = NotProvided,
        entropy_coeff: float = NotProvided,
        num_epochs_per_turn: int = NotProvided,
        old_policy: str = NotProvided,
        max_turns: int | None = NotProvided,
        skip_zero_advantage_updates: bool = NotProvided,
        micro_batch_tokens: int | None = NotProvided,
        step_advantage_weight: float = NotProvided,
        step_discount: float = NotProvided,
        **kwargs,
    ) -> "SeeUPOConfig":
        """Sets SeeUPO's training settings (and any of ``AlgorithmConfig.training``'s).

        Args:
            group_size: Rollouts per task (n); advantages are relative to the group.
            tasks_per_iteration: Tasks drawn per iteration (B); B * n episodes are sampled.
                Tasks are drawn with replacement when B exceeds the env's train tasks, and
                the draws of one task form one group (a one-context bandit: one group of
                B * n episodes).
            update_order: ``reverse`` (SeeUPO: T-1 down to 0), ``forward``, ``random`` or
                ``parallel`` (every turn in one update, as GRPO/GSPO).
            advantage_norm: ``group_std`` (the default: each group's rewards over their
                std, as GRPO; one batch scale let a nearly solved kind of task be forgotten,
                docs/RESULTS.md section 2), ``batch`` (one std over the batch, then clip: the
                paper's and the release's), ``none`` or ``leave_one_out`` (RLOO).
            advantage_clip: Bound c of ``batch`` advantages (the other norms are not
                clipped); None disables the clip.
            advantage_clip_mode: ``clamp`` (each advantage to [-c, c]) or ``scale_group``
                (a group whose largest |A| exceeds c is scaled down as a whole, so that its
                advantages still sum to zero).
            ratio_level: ``sequence`` (GSPO's geometric-mean ratio) or ``token``.
            clip_param: PPO clip range eps of the ratio.
            compound_factor: ``stepwise`` (HAPPO's factor M: the product of each updated
                turn's ratio change around its own update), ``cumulative`` (the joint ratio
                of the turns updated so far, current weights against the rollout policy) or
                ``none``. Either factor is built from GSPO's length-normalised sequence
                ratios (``objectives.sequence_log_ratio``), whatever ``ratio_level`` is.
            compound_clip: Clip range eps_M of M.
            kl_coeff: beta of the k3 KL to the reference (initial) policy.
            entropy_coeff: Coefficient of the entropy bonus.
            num_epochs_per_turn: Passes over a turn's rows per turn update (``minibatch_size``
                splits each pass into several optimizer steps; None = one step per pass).
            old_policy: ``current``: pi_old of turn k is the parameters left by the turns
                updated before it (recomputed); ``rollout``: the sampling policy.
            max_turns: Train turns 0 .. max_turns-1 only; later turns of longer episodes are
                left out of every update (counted in ``rollouts/dropped_turns``). None: all.
            skip_zero_advantage_updates: Skip a turn update whose advantages are all zero
                and whose loss has no KL or entropy term (no signal): no optimizer step, so
                Adam's carried moments cannot move the weights either.
            micro_batch_tokens: The most prompt + response tokens one forward/backward
                pass of the learner holds: each minibatch (one optimizer step) is run in
                micro-batches of consecutive rows within this budget, whose gradients
                accumulate, each loss weighted by its share of the minibatch's rows, so the
                step is the one-pass step and ``minibatch_size`` keeps its meaning (a longer
                row forms a micro-batch of its own). The no-grad log-prob passes use the
                same budget. None: the whole minibatch in one pass.
            step_advantage_weight: omega of GiGPO's step-level advantage (Feng et al. 2025):
                each turn row's advantage becomes its episode's plus omega times its
                discounted return relative to the rows of the same task that reached the same
                observation at the same turn (normalised as ``advantage_norm`` says for
                ``group_std``, else centred only). 0 (SeeUPO's default): episode-level only.
            step_discount: gamma of those discounted returns (GiGPO's default 0.95).
        """
        super().training(**kwargs)
        for name, value in dict(
            group_size=group_size,
            tasks_per_iteration=tasks_per_iteration,
            update_order=update_order,
            advantage_norm=advantage_norm,
            advantage_clip=advantage_clip,
            ratio_level=ratio_level,
            clip_param=clip_param,
            compound_factor=compound_factor,
            compound_clip=compound_clip,
            kl_coeff=kl_coeff,
            entropy_coeff=entropy_coeff,
            num_epochs_per_turn=num_epochs_per_turn,
            old_policy=old_policy,
            max_turns=max_turns,
            advantage_clip_mode=advantage_clip_mode,
            skip_zero_advantage_updates=skip_zero_advantage_updates,
            micro_batch_tokens=micro_batch_tokens,
            step_advantage_weight=step_advantage_weight,
            step_discount=step_discount,
        ).items():
            if value is not NotProvided:
                setattr(self, name, value)
        return self

    def validate(self) -> None:
        super().validate()
        self._validate_seeupo()

    def _validate_seeupo(self) -> None:
        def fail(field: str, why: str):
            raise ValueError(f"SeeUPOConfig.{field}: {why} (got {getattr(self, field)!r})")

        for field, enum_cls in (
            ("update_order", UpdateOrder),
            ("advantage_norm", AdvantageNorm),
            ("ratio_level", RatioLevel),
            ("compound_factor", CompoundFactor),
            ("advantage_clip_mode", AdvantageClip),
        ):
            allowed = [e.value for e in enum_cls]
            if getattr(self, field) not in allowed and getattr(self, field) not in list(enum_cls):
                fail(field, f"must be one of {allowed}")
        for field in ("group_size", "tasks_per_iteration", "num_epochs_per_turn"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, "must be an integer >= 1")
        if self.group_size < 2:
            fail("group_size", "must be >= 2: a group-relative advantage needs two rollouts per task")
        for field in ("clip_param", "compound_clip"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not value > 0:
                fail(field, "must be a number > 0")
        if self.compound_clip >= 1:
            fail("compound_clip", "must be < 1 so that M stays positive")
        if self.advantage_clip is not None and not (
            isinstance(self.advantage_clip, (int, float)) and self.advantage_clip > 0
        ):
            fail("advantage_clip", "must be a number > 0 or None")
        for field in ("kl_coeff", "entropy_coeff"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or (field == "kl_coeff" and value < 0):
                fail(field, "must be a finite number" + (" >= 0" if field == "kl_coeff" else ""))
        if self.old_policy not in OLD_POLICY_SOURCES:
            fail("old_policy", f"must be one of {list(OLD_POLICY_SOURCES)}")
        if not isinstance(self.skip_zero_advantage_updates, bool):
            fail("skip_zero_advantage_updates", "must be true or false")
        if self.max_turns is not None and (not isinstance(self.max_turns, int) or self.max_turns < 1):
            fail("max_turns", "must be an integer >= 1 or None")
        if self.minibatch_size is not None and (not isinstance(self.minibatch_size, int) or self.minibatch_size < 1):
            fail("minibatch_size", "must be an integer >= 1 or None")
        if self.micro_batch_tokens is not None and (
            not isinstance(self.micro_batch_tokens, int) or isinstance(self.micro_batch_tokens, bool) or self.micro_batch_tokens < 1
        ):
            fail("micro_batch_tokens", "must be an integer >= 1 or None")
        weight = self.step_advantage_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            fail("step_advantage_weight", "must be a finite number >= 0")
        gamma = self.step_discount
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
            fail("step_discount", "must be a number in (0, 1]")
        if self.num_epochs != 1:
            # RLlib's PPO field; SeeUPO's passes are per turn update, and silently ignoring
            # it would leave a user's PPO-style config training one pass per turn.
            fail("num_epochs", "SeeUPO does not read it: set num_epochs_per_turn (passes over a turn's rows per turn update)")
        if self.batch_mode != "complete_episodes":
            fail("batch_mode", "must be 'complete_episodes': advantages need whole episodes")
        if not isinstance(self.lr, (list, tuple)) and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            fail("lr", "must be a number > 0 or a schedule")

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from rllib_seeupo.modules.tabular import TabularSoftmaxRLModule

        return RLModuleSpec(module_class=TabularSoftmaxRLModule)

    def get_default_learner_class(self) -> type["Learner"]:
        from rllib_seeupo.learner import SeeUPOTorchLearner

        return SeeUPOTorchLearner
