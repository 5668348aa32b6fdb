"""A key/value cache of lanes, one per row, whose memory follows the tokens, for transformers.

Every attention layer gets a keys and a values tensor of shape
(lanes, heads, columns, head_dim), created at the first step: a row keeps its
tokens in a lane of its own, at the columns of their positions. On the CPU
the tensors are committed page by page as they are written, and the pages of
what a row no longer holds are given back (`_lane_memory`): memory follows the
tokens, not lanes x columns. `_lane_blocks` counts it in blocks, within a
budget, and names the blocks a prefix cache reuses (`copy_lane`).

A row keeps its lane for its life (`_step_plan.Lanes`). A step's rows sorted
by lane read the cache through a view of the lanes they span, with no copy:
as one run, or in runs split where lanes are missing (`_row_attention`); a
step that cannot be read so (a prefill over scattered lanes) gathers them.

Layers that keep no keys and values (recurrent layers, MoE-only layers) hold
a placeholder that the adapter swaps per forward pass (see `_recurrent`).

Before each forward pass the adapter sets the `Plan`: where each new key goes
(a prefill's padding tokens go to a scratch lane, never read) and which lanes
to read back, up to ``kv_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer

from ._lane_memory import LaneTensor, lane_tensor

__all__ = ["LaneCache", "Plan"]


@dataclass
class Plan:
    """Where one forward pass writes and what it reads, in the batch's row order."""

    write_rows: torch.Tensor  # (B, 1) lanes, or (B, W): the scratch lane for padding
    write_columns: torch.Tensor  # (B, W) columns: positions (padding: anywhere in scratch)
    read: slice | torch.Tensor  # the lanes read: a span of lanes, or an index (a gather)
    kv_length: int


class _LaneLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One layer's keys and values for every lane."""

    is_sliding = False

    def __init__(self, cache: LaneCache) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._cache = cache
        self._memory: list[LaneTensor] = []

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        lanes, columns = self._cache.lanes, self._cache.columns
        device = key_states.device
        shape_k = (lanes, key_states.shape[1], columns, key_states.shape[-1])
        shape_v = (lanes, value_states.shape[1], columns, value_states.shape[-1])
        self._memory = [
            lane_tensor(shape_k, key_states.dtype, device),
            lane_tensor(shape_v, value_states.dtype, device),
        ]
        self.keys, self.values = (memory.tensor for memory in self._memory)
        # (lanes, columns, heads, dim) views: a step's new keys go in with one index_put_
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

    def copy(self, source: int, lane: int, columns: int) -> None:
        if self.keys is not None and self.values is not None:
            self.keys[lane, :, :columns] = self.keys[source, :, :columns]
            self.values[lane, :, :columns] = self.values[source, :, :columns]

    def forget(self, lane: int, start: int, stop: int) -> None:
        for memory in self._memory:
            memory.release(lane, start, stop)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._cache.plan.kv_length, 0

    def get_seq_length(self) -> int:
        """The tokens seen before this pass (as ``DynamicCache`` says before its update)."""
        plan = self._cache.plan
        return plan.kv_length - int(plan.write_columns.shape[1])

    def get_max_length(self) -> int:
        return self._cache.columns


class LaneCache(Cache):
    """Keys and values in ``lanes`` lanes of ``columns`` positions each."""

    def __init__(self, lanes: int, columns: int, attention: list[bool]) -> None:
        """``attention``: for each layer, whether it keeps keys and values."""
        self.lanes = lanes
        self.columns = columns
        layers: list[Any] = [_LaneLayer(self) if kv else DummyLayer() for kv in attention]  # type: ignore[no-untyped-call]
        super().__init__(layers=layers)
        self.plan = Plan(torch.zeros(0, 1), torch.zeros(0, 1), slice(0, 0), 0)

    def copy_lane(self, source: int, lane: int, columns: int) -> None:
        """Copy lane ``source``'s first ``columns`` positions into lane ``lane``, every layer."""
        for layer in self.layers:
            if isinstance(layer, _LaneLayer):
                layer.copy(source, lane, columns)

    def forget(self, lane: int, start: int, stop: int) -> None:
        """Give back the memory of ``lane``'s columns ``start`` … ``stop - 1``, every layer."""
        for layer in self.layers:
            if isinstance(layer, _LaneLayer):
                layer.forget(lane, start, stop)
