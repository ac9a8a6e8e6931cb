"""RLModules that SeeUPO trains: one module id serves every ``turn_k`` agent."""

from rllib_seeupo.modules.api import RESPONSE_LOGP, RESPONSE_MASK, TurnPolicyAPI
from rllib_seeupo.modules.tabular import TabularSoftmaxRLModule

__all__ = ["RESPONSE_LOGP", "RESPONSE_MASK", "TabularSoftmaxRLModule", "TurnPolicyAPI"]
