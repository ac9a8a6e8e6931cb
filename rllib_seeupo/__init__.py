"""rllib-seeupo: SeeUPO (arXiv 2602.06554) as a Ray RLlib algorithm.

Importing the package registers the built-in ``seeupo/<name>`` envs and the algorithms with Tune
(``register_turn_env`` adds your own env),
so ``tune.Tuner("SeeUPO", ...)`` works by name.

On a machine without Ray only the Ray-free compute core can be imported
(``rllib_seeupo.llm.core``, with ``rllib_seeupo.batching`` and ``rllib_seeupo.columns``).
"""

import importlib.util

if importlib.util.find_spec("ray") is None:
    __all__: list[str] = []
else:
    from ray.tune.registry import register_trainable

    from rllib_seeupo import notices

    notices.install()

    from rllib_seeupo.algorithm import SeeUPO
    from rllib_seeupo.config import SeeUPOConfig
    from rllib_seeupo.evaluation import HeldOutEvaluation, held_out_evaluation
    from rllib_seeupo.presets import (
        ALGORITHMS,
        GRAEReinforce,
        GRAEReinforceConfig,
        GRPO,
        GRPOConfig,
        GSPO,
        GSPOConfig,
        GiGPO,
        GiGPOConfig,
        RLOO,
        RLOOConfig,
        ppo_config,
    )
    from rllib_seeupo.turn_env import SHARED_MODULE_ID, register_envs, register_turn_env

    register_envs()
    for _name, _cls in ALGORITHMS.items():
        register_trainable(_name, _cls)

    __all__ = [
        "GRAEReinforce",
        "GRAEReinforceConfig",
        "GRPO",
        "GRPOConfig",
        "GSPO",
        "GSPOConfig",
        "GiGPO",
        "GiGPOConfig",
        "HeldOutEvaluation",
        "RLOO",
        "RLOOConfig",
        "SHARED_MODULE_ID",
        "SeeUPO",
        "SeeUPOConfig",
        "held_out_evaluation",
        "register_turn_env",
        "ppo_config",
    ]
