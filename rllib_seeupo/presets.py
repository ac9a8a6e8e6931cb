"""The baselines, built from SeeUPO's own pieces so that comparisons are fair
(DESIGN.md section 4). Each is a config class with other defaults plus an Algorithm class
registered with Tune under its name."""

from __future__ import annotations

from rllib_seeupo.algorithm import SeeUPO
from rllib_seeupo.config import SeeUPOConfig


class GRPOConfig(SeeUPOConfig):
    """GRPO (Shao et al. 2024): all turns in one update, per-group std, token-level ratio."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GRPO)
        self.update_order = "parallel"
        self.advantage_norm = "group_std"
        self.ratio_level = "token"
        self.compound_ratio = "none"


class GSPOConfig(SeeUPOConfig):
    """GSPO (Zheng et al. 2025): all turns in one update, per-group std, sequence ratio."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GSPO)
        self.update_order = "parallel"
        self.advantage_norm = "group_std"
        self.ratio_level = "sequence"
        self.compound_ratio = "none"


class RLOOConfig(SeeUPOConfig):
    """RLOO (Ahmadian et al. 2024): all turns in one update, leave-one-out baseline, no std."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or RLOO)
        self.update_order = "parallel"
        self.advantage_norm = "leave_one_out"
        self.ratio_level = "token"
        self.compound_ratio = "none"


class GRAEReinforceConfig(SeeUPOConfig):
    """REINFORCE with group-centred advantages: one on-policy step on all turns, no clip."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GRAEReinforce)
        self.update_order = "parallel"
        self.advantage_norm = "none"
        self.ratio_level = "sequence"
        self.compound_ratio = "none"
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


class GRAEReinforce(SeeUPO):
    @classmethod
    def get_default_config(cls) -> GRAEReinforceConfig:
        return GRAEReinforceConfig()


ALGORITHMS = {
    "SeeUPO": SeeUPO,
    "GRPO": GRPO,
    "GSPO": GSPO,
    "RLOO": RLOO,
    "GRAE-REINFORCE": GRAEReinforce,
}
