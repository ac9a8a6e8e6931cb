"""Tabular multi-turn contextual bandit with an exactly computable objective."""

from envs.bandit.bandit import BanditInstance, env, make_instance, raw_env

__all__ = ["BanditInstance", "env", "make_instance", "raw_env"]
