"""The baselines, built from SeeUPO's own pieces so that comparisons are fair
(docs/design.md section 1.6). Each is a config class with other defaults plus an Algorithm class
registered with Tune under its name. RLlib's own PPO runs unmodified through
``ppo_config`` (``turn_agent_settings`` wires any RLlib algorithm to the turn agents)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_seeupo.algorithm import SeeUPO
from rllib_seeupo.config import SeeUPOConfig
from rllib_seeupo.turn_env import SHARED_MODULE_ID, shared_module_mapping

if TYPE_CHECKING:
    from ray.rllib.algorithms.ppo import PPOConfig


class _ParallelBaselineConfig(SeeUPOConfig):
    """What every baseline shares: all turns in one update, no compound factor, and, as in
    the literature, pi_old the weights the update starts from and a step every iteration,
    signal or not; the advantage clip stays the per-advantage clamp these baselines were
    measured with (SeeUPO's shared-weight defaults are not theirs)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class)
        self.update_order = "parallel"
        self.compound_factor = "none"
        self.old_policy = "current"
        self.skip_zero_advantage_updates = False
        self.advantage_clip_mode = "clamp"


class GRPOConfig(_ParallelBaselineConfig):
    """GRPO (Shao et al. 2024): all turns in one update, per-group std, token-level ratio."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GRPO)
        self.advantage_norm = "group_std"
        self.ratio_level = "token"


class GSPOConfig(_ParallelBaselineConfig):
    """GSPO (Zheng et al. 2025): all turns in one update, per-group std, sequence ratio."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GSPO)
        self.advantage_norm = "group_std"
        self.ratio_level = "sequence"


class RLOOConfig(_ParallelBaselineConfig):
    """RLOO (Ahmadian et al. 2024): all turns in one update, leave-one-out baseline, no std."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or RLOO)
        self.advantage_norm = "leave_one_out"
        self.ratio_level = "token"


class GiGPOConfig(_ParallelBaselineConfig):
    """GiGPO (Feng et al. 2025, arXiv 2505.10978; verl-agent): GRPO's update with each turn's
    advantage the episode's group-centred reward plus omega = 1 times its discounted return
    (gamma 0.95) centred over the rollouts that reached the same observation at that turn;
    F_norm = 1 at both levels (the paper's default for agent tasks), token-level ratio."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GiGPO)
        self.advantage_norm = "none"
        self.ratio_level = "token"
        self.step_advantage_weight = 1.0
        self.step_discount = 0.95


class GRAEReinforceConfig(_ParallelBaselineConfig):
    """REINFORCE with group-centred advantages: one on-policy step on all turns, no clip."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GRAEReinforce)
        self.advantage_norm = "none"
        self.ratio_level = "sequence"
        self.clip_param = float("inf")
        self.num_epochs_per_turn = 1
        self.minibatch_size = None


class GRPO(SeeUPO):
    @classmethod
    def get_default_config(cls) -> GRPOConfig:
        return GRPOConfig()


class GSPO(SeeUPO):
    @classmethod
    def get_default_config(cls) -> GSPOConfig:
        return GSPOConfig()


class RLOO(SeeUPO):
    @classmethod
    def get_default_config(cls) -> RLOOConfig:
        return RLOOConfig()


class GiGPO(SeeUPO):
    @classmethod
    def get_default_config(cls) -> GiGPOConfig:
        return GiGPOConfig()


class GRAEReinforce(SeeUPO):
    @classmethod
    def get_default_config(cls) -> GRAEReinforceConfig:
        return GRAEReinforceConfig()


def turn_agent_settings(config: AlgorithmConfig) -> AlgorithmConfig:
    """Sets up any RLlib algorithm config (e.g. ``PPOConfig``) for a turn-as-agent env the
    way ``SeeUPOConfig`` is: every ``turn_k`` agent served by the one shared module, whole
    episodes sampled in this process (no remote env runners), episode data kept as lists
    (text observations, token ids of varying length) and the learner-connector piece that
    pads those ids for the LLM module (it does nothing for other modules), and the
    episode success rate in the results (``env_runners/success_rate``). The tabular module is
    the default RLModule. Returns ``config``."""
    from rllib_seeupo.callbacks import log_episode_success, log_optimizer_steps
    from rllib_seeupo.llm.ppo import PadTurnColumns
    from rllib_seeupo.modules.tabular import TabularSoftmaxRLModule

    config.multi_agent(policies={SHARED_MODULE_ID}, policy_mapping_fn=shared_module_mapping)
    # Env runners in this process, as SeeUPO's: each remote one would hold its own model.
    config.env_runners(num_env_runners=0, batch_mode="complete_episodes", episodes_to_numpy=False)
    config.learners(learner_connector=PadTurnColumns)
    config.rl_module(rl_module_spec=RLModuleSpec(module_class=TabularSoftmaxRLModule))
    # A callable of its own (not a callbacks class), so a YAML's `callbacks:` keeps it.
    config.callbacks(on_episode_end=log_episode_success, on_train_result=log_optimizer_steps)
    return config


def ppo_config(
    env: str,
    *,
    env_config: dict[str, Any] | None = None,
    module_class: type | None = None,
    model_config: dict[str, Any] | None = None,
) -> "PPOConfig":
    """RLlib's built-in PPO (``ray.rllib.algorithms.ppo.PPO``, unmodified) on one of our
    turn-as-agent envs: GAE with the module's value head, each turn a one-step episode of
    its ``turn_k`` agent whose reward is the episode's team reward.

    .. code-block:: python

        from rllib_seeupo import ppo_config
        from rllib_seeupo.llm.module import LLMRLModule

        config = ppo_config("seeupo/tool_tasks", module_class=LLMRLModule,
                            model_config={"model": "smollm2-135m-instruct"})
        config.training(lr=1e-4, train_batch_size_per_learner=64, minibatch_size=16)
        algo = config.build_algo()

    Args:
        env: A registered env name (``seeupo/<name>``).
        env_config: The env's settings.
        module_class: The RLModule (default ``TabularSoftmaxRLModule``); it must implement
            ``ValueFunctionAPI``, as ``LLMRLModule`` and the tabular module do.
        model_config: The module's ``model_config``.
    Returns:
        A ``PPOConfig``; chain ``.training(...)`` etc. as usual.
    """
    from ray.rllib.algorithms.ppo import PPOConfig

    config = turn_agent_settings(PPOConfig().environment(env, env_config=dict(env_config or {})))
    if module_class is not None:
        config.rl_module(rl_module_spec=RLModuleSpec(module_class=module_class))
    if model_config is not None:
        config.rl_module(model_config=dict(model_config))
    return config


ALGORITHMS = {
    "SeeUPO": SeeUPO,
    "GRPO": GRPO,
    "GSPO": GSPO,
    "RLOO": RLOO,
    "GiGPO": GiGPO,
    "GRAE-REINFORCE": GRAEReinforce,
}
