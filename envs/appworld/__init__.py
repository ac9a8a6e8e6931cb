"""AppWorld tasks through AppWorld's own environment server (HTTP; ``appworld`` is never imported)."""

from envs.appworld.appworld_env import SPLITS, env, extract_code, raw_env, read_task_ids, system_prompt
from envs.appworld.client import (
    AppWorldClient,
    AppWorldError,
    AppWorldServerError,
    AppWorldServerUnreachable,
    AppWorldTimeout,
)

__all__ = [
    "AppWorldClient",
    "AppWorldError",
    "AppWorldServerError",
    "AppWorldServerUnreachable",
    "AppWorldTimeout",
    "SPLITS",
    "env",
    "extract_code",
    "raw_env",
    "read_task_ids",
    "system_prompt",
]
