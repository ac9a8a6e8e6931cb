"""The LLM side: models from local files or PyPI packages, and the shared LLM RLModule."""
