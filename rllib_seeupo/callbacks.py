"""RLlib callbacks that add exact or held-out figures to the training results."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from rllib_seeupo.turn_env import SHARED_MODULE_ID


class BanditOptimality(RLlibCallback):
    """Adds ``optimality_ratio`` = J(pi) / J* to every result on ``seeupo/bandit``,
    computed exactly from the tabular policy (no sampling)."""

    def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs) -> None:
        from envs.bandit import raw_env

        instance = raw_env(**dict(algorithm.config.env_config)).instance
        policy = algorithm.get_module(SHARED_MODULE_ID).action_probabilities()
        result["optimality_ratio"] = instance.objective(policy) / instance.optimal_objective()
