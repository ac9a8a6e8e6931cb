"""PettingZoo environments where each turn of an episode is a virtual agent ``turn_k``.

Each package follows PettingZoo's convention: ``envs.<name>.env(**config)`` returns an AEC
env and ``envs.<name>.raw_env`` is its class. No RLlib or model imports live here.
"""
