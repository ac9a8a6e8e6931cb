"""The embedded default env: multi-turn inventory tool-use tasks, no download needed."""

from envs.tool_tasks.tool_tasks import Task, env, make_task, oracle_response, raw_env, system_prompt

__all__ = ["Task", "env", "make_task", "oracle_response", "raw_env", "system_prompt"]
