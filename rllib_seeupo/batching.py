"""Splitting rows into groups: consecutive rows within a token budget (the packed sequences
of the LLM module's forward, the learner's micro-batches) and a turn update's minibatches."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


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


def minibatch_indices(num_rows: int, size: int | None, num_epochs: int, shuffle: bool, rng) -> Iterator[np.ndarray]:
    """Row indices of each minibatch of a turn update: ``num_epochs`` passes over the rows,
    each split into minibatches of at most ``size`` rows (None: one), shuffled per pass when
    split (``rng``: a ``numpy.random.Generator``). Unlike RLlib's cyclic iterator, no row is
    taken twice in a pass."""
    size = size or num_rows
    for _ in range(num_epochs):
        order = rng.permutation(num_rows) if shuffle and size < num_rows else np.arange(num_rows)
        for start in range(0, num_rows, size):
            yield order[start : start + size]
