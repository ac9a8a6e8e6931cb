"""Splitting a sequence of rows into consecutive groups within a token budget (the packed
sequences of the LLM module's forward, the learner's micro-batches)."""

from __future__ import annotations

from typing import Sequence


def consecutive_slices(lengths: Sequence[int], max_tokens: int | None) -> list[slice]:
    """Consecutive rows grouped into slices of at most ``max_tokens`` tokens in all; a row
    longer than the budget forms a slice of its own. None: one slice of every row."""
    if max_tokens is None:
        return [slice(0, len(lengths))]
    slices, start, tokens = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and tokens + n > max_tokens:
            slices.append(slice(start, i))
            start, tokens = i, 0
        tokens += n
    slices.append(slice(start, len(lengths)))
    return slices
