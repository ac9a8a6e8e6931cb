"""Filters for Ray's log notices that a user of this package cannot act on; installed when
``rllib_seeupo`` is imported (so in Ray's worker processes too). Each drops exactly one
message, named here with the reason."""

from __future__ import annotations

import logging

# logger name -> message fragments dropped from it.
NOTICES = {
    # Every algorithm here runs on the new API stack; the notice would also precede the
    # one-line error of a config check.
    "ray.rllib.algorithms.algorithm_config": ("on the new API stack!",),
    # RLlib 2.60's RLModule.__init__ builds its deprecated RLModuleConfig for every module,
    # whatever the caller passes: RLlib's own code, not a call a user can change.
    "ray._common.deprecation": ("RLModule(config=[RLModuleConfig object])",),
    # Tune's GPU monitoring, irrelevant to a CPU run and to a GPU run's results.
    "ray.tune.utils.util": ("Install gputil for GPU system monitoring",),
}


class _DropNotices(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def install() -> None:
    """Add the filters (once per logger)."""
    for name, fragments in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(fragments))
