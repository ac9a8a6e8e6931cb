"""A key/value cache for the decode loop that is written in place.

transformers' ``DynamicCache`` appends every decode step's keys and values with
``torch.cat``, which copies the whole cache of every layer at every step. Here each layer
reserves its full length up front (shared head + prompt + new tokens) and a step writes one
position into it (the rollout benchmark's batched run: 13.1 s -> 12.3 s, benchmarks/README.md).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class ReservedLayer(DynamicLayer):
    """One layer's keys and values in buffers of ``(batch_size, H_kv, capacity, D)``;
    ``keys`` / ``values`` are views of the filled part, as ``DynamicLayer`` exposes them."""

    def __init__(self, batch_size: int, capacity: int):
        super().__init__()
        self.batch_size, self.capacity, self.length = batch_size, capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        heads = key_states.shape[1]
        self._keys = key_states.new_empty((self.batch_size, heads, self.capacity, key_states.shape[-1]))
        self._values = value_states.new_empty((self.batch_size, heads, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states (B, H_kv, Q, D) -> the cached (B, H_kv, length, D)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"ReservedLayer: {end} positions exceed the reserved {self.capacity}")
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def write_rows(self, first_row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Set rows ``first_row, ...`` to ``keys`` / ``values`` (n, H_kv, length, D); every
        row of the layer is to hold ``length`` positions."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        rows, self.length = slice(first_row, first_row + keys.shape[0]), keys.shape[-2]
        self._keys[rows, :, : self.length] = keys
        self._values[rows, :, : self.length] = values
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self.batch_size = self._keys.shape[0]
        self._refresh_views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("ReservedLayer: reserve the batch size up front instead")

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("ReservedLayer.crop takes the number of positions to remove, as a negative int")
        self.length = max(0, self.length + tokens_to_remove)
        self._refresh_views()


def copy_packed_rows(packed: Cache, head: int, lengths: list[int], width: int, rows: Cache, first_row: int) -> None:
    """Copy the rows of a packed sequence into a batch cache.

    Args:
        packed: batch 1, ``[head | row 0 | row 1 | ...]``, row i ``lengths[i]`` positions.
        head: positions every row starts with.
        width: positions of the widest row of the batch (``>= max(lengths)``).
        rows: ``ReservedLayer``s; rows ``first_row, ...`` of it receive the packed rows laid
            out ``[head | left padding | row i]``, ``head + width`` positions (the padding
            holds arbitrary values: mask it).
    """
    device = packed.layers[0].keys.device
    sizes = torch.tensor(lengths, device=device)
    starts = head + torch.cumsum(sizes, 0) - sizes
    column = torch.arange(width, device=device)
    # Column c of row i's remainder holds packed position starts[i] + c - (width - lengths[i]).
    source = starts[:, None] + column[None, :] - (width - sizes)[:, None]
    source = torch.where(column[None, :] >= (width - sizes)[:, None], source, 0)
    index = torch.cat([torch.arange(head, device=device).expand(len(lengths), head), source], dim=1)  # (n, head + width)
    for packed_layer, layer in zip(packed.layers, rows.layers):
        keys, values = (t[0][:, index].transpose(0, 1) for t in (packed_layer.keys, packed_layer.values))
        layer.write_rows(first_row, keys, values)


def reserved_cache(model_config, batch_size: int, capacity: int) -> Cache:
    """A cache of ``ReservedLayer``s, one per decoder layer of ``model_config``."""
    layers = model_config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[ReservedLayer(batch_size, capacity) for _ in range(layers)])
