"""RLlib callbacks that add exact or held-out figures to the training results."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from rllib_seeupo.turn_env import SHARED_MODULE_ID, final_info


class BanditOptimality(RLlibCallback):
    """Adds ``optimality_ratio`` = J(pi) / J* to every result on ``seeupo/bandit``,
    computed exactly from the tabular policy (no sampling)."""

    def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs) -> None:
        from envs.bandit import raw_env

        instance = raw_env(**dict(algorithm.config.env_config)).instance
        policy = algorithm.get_module(SHARED_MODULE_ID).action_probabilities()
        result["optimality_ratio"] = instance.objective(policy) / instance.optimal_objective()


def log_episode_success(*, episode, metrics_logger=None, **kwargs) -> None:
    """``on_episode_end`` for RLlib's own algorithms (PPO) on a turn-as-agent env: logs the
    ``success`` of the episode's last infos, so that ``env_runners/success_rate`` is the
    iteration's success rate, the figure SeeUPO reports as ``rollouts/success_rate``."""
    info = final_info(episode)
    if "success" in info and metrics_logger is not None:
        # A plain mean is reset at every reduce: one value per training iteration.
        metrics_logger.log_value("success_rate", float(info["success"]), reduce="mean")


def log_optimizer_steps(*, algorithm, result, **kwargs) -> None:
    """``on_train_result`` for RLlib's own algorithms (PPO) on a turn-as-agent env: the
    optimizer steps taken so far under ``optimizer_steps``, as SeeUPO reports them."""
    from rllib_seeupo.learner_calls import OPTIMIZER_STEPS, optimizer_steps

    steps = optimizer_steps(algorithm.learner_group)
    if steps is not None:
        result[OPTIMIZER_STEPS] = steps
