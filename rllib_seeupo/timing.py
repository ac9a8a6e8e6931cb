"""Seconds per named phase, summed until read: the cost breakdown of an update
(``SeeUPO.update_policy`` and the learner's step; ``benchmarks/update_cost.py`` reports it)."""

from __future__ import annotations

import collections
import contextlib
import time


class PhaseTimer:
    """``with timer("backward"): ...`` adds the block's seconds to its phase."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """The seconds per phase since the last ``pop``; the timer starts again from zero."""
        seconds, self.seconds = dict(self.seconds), collections.Counter()
        return seconds
