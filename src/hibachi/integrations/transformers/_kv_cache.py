"""A key/value cache with one row per slot, allocated once, for transformers models.

Every attention layer gets a keys and a values tensor of shape
(slots, heads, max_length + 1, head_dim), created at the first step and
written in place ever after: memory does not grow with the requests served.

Slots are mapped to *physical rows* kept dense in 0 … m-1 (a released slot's
row is filled with the last one, as hibachi's scheduler does with its rows).
A step whose rows, sorted, are a contiguous run of physical rows — every decode
step over all active rows — then reads the cache through a view, with no copy.

Layers that keep no keys and values (recurrent layers, MoE-only layers) hold
a placeholder that the adapter swaps per forward pass (see `_recurrent`).

Before each forward pass the adapter sets the `Plan`: where each new key goes
(the last column, ``max_length``, is scratch space for padding tokens, never
read) and which rows to read back, up to ``kv_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer

__all__ = ["Plan", "SlotCache"]


@dataclass
class Plan:
    """Where one forward pass writes and what it reads, in the batch's row order."""

    write_rows: torch.Tensor  # (B, 1) physical rows
    write_columns: torch.Tensor  # (B, W) cache positions; max_length for padding
    read: slice | torch.Tensor  # the batch's physical rows: a run, or an index
    kv_length: int


class _SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One layer's keys and values for every physical row."""

    is_sliding = False

    def __init__(self, cache: SlotCache) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._cache = cache

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, columns = self._cache.rows, self._cache.max_length + 1
        heads, device = key_states.shape[1], key_states.device
        shape_k = (rows, heads, columns, key_states.shape[-1])
        shape_v = (rows, value_states.shape[1], columns, value_states.shape[-1])
        self.keys = torch.zeros(shape_k, dtype=key_states.dtype, device=device)
        self.values = torch.zeros(shape_v, dtype=value_states.dtype, device=device)
        # (rows, columns, heads, dim) views: a step's new keys go in with one index_put_
        self._keys_by_column = self.keys.transpose(1, 2)
        self._values_by_column = self.values.transpose(1, 2)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        plan = self._cache.plan
        where = (plan.write_rows, plan.write_columns)
        self._keys_by_column.index_put_(where, key_states.transpose(1, 2))
        self._values_by_column.index_put_(where, value_states.transpose(1, 2))
        columns = slice(0, plan.kv_length)
        return keys[plan.read, :, columns], values[plan.read, :, columns]

    def move(self, src: int, dst: int, length: int) -> None:
        if self.keys is not None and self.values is not None:
            self.keys[dst, :, :length] = self.keys[src, :, :length]
            self.values[dst, :, :length] = self.values[src, :, :length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._cache.plan.kv_length, 0

    def get_seq_length(self) -> int:
        """The tokens seen before this pass (as ``DynamicCache`` says before its update)."""
        plan = self._cache.plan
        return plan.kv_length - int(plan.write_columns.shape[1])

    def get_max_length(self) -> int:
        return self._cache.max_length


class SlotCache(Cache):
    """Per-slot keys and values for ``slots`` sequences of up to ``max_length`` tokens."""

    def __init__(self, slots: int, max_length: int, attention: list[bool]) -> None:
        """``attention``: for each layer, whether it keeps keys and values."""
        self.rows = slots
        self.max_length = max_length
        layers: list[Any] = [_SlotLayer(self) if kv else DummyLayer() for kv in attention]  # type: ignore[no-untyped-call]
        super().__init__(layers=layers)
        self.plan = Plan(torch.zeros(0, 1), torch.zeros(0, 1), slice(0, 0), 0)

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy physical row ``src``'s first ``length`` positions into row ``dst``."""
        for layer in self.layers:
            if isinstance(layer, _SlotLayer):
                layer.move(src, dst, length)
