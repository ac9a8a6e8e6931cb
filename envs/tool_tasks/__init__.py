"""The embedded default env: multi-turn inventory tool-use tasks, no download needed."""

from envs.tool_tasks.tool_tasks import (
    DEPENDENT_LEVELS, Task, blind_policies, env, make_task, oracle_response, raw_env, reference_success, system_prompt,
)

__all__ = [
    "DEPENDENT_LEVELS", "Task", "blind_policies", "env", "make_task", "oracle_response", "raw_env", "reference_success",
    "system_prompt",
]
