"""BFCL v4 multi-turn categories from the ``bfcl-eval`` package (imported on first use)."""

from envs.bfcl.backend import CATEGORIES, INSTALL_HINT, decode_response
from envs.bfcl.bfcl import env, ground_truth_response, raw_env

__all__ = ["CATEGORIES", "INSTALL_HINT", "decode_response", "env", "ground_truth_response", "raw_env"]
