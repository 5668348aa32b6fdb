"""Each forward pass's rows, positions and cache columns, kept from one step to the next.

The adapter keeps each slot's length (tokens seen) on the host and maps slots
to *physical* cache rows, dense in 0 … m-1 (`PhysicalRows`). A step's rows
are passed to the model sorted by physical row, so that a run of rows reads
the cache through a view.

What depends only on which rows step (their order, physical rows and the index
tensors built from them: a `Layout`) is kept while the same rows keep stepping,
as every decode step over all active rows does. A decode step then only writes
its rows' positions into a preallocated buffer and hands it to the device in
one copy (none on the CPU, where the buffer is the tensor): nothing is read
back from the device, so no step waits for the model but to hand out tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._kv_cache import Plan

__all__ = ["Layout", "PhysicalRows", "StepPlanner", "in_order", "on_device"]


class PhysicalRows:
    """Slots mapped to physical cache rows, kept dense in first … first+count-1.

    ``first``: where this set of rows begins (a staged model's groups each
    keep theirs apart, so a release in one group never moves another's row).
    """

    def __init__(self, slots: int, first: int = 0) -> None:
        self.phys = np.full(slots, -1, dtype=np.int64)
        self.slot_at = np.full(slots, -1, dtype=np.int64)
        self.first = first
        self.count = 0
        self.version = 0  # changes whenever a slot's row does

    def add(self, slot: int) -> None:
        row = self.first + self.count
        self.phys[slot] = row
        self.slot_at[row] = slot
        self.count += 1
        self.version += 1

    def remove(self, slot: int) -> tuple[int, int, int] | None:
        """Unmap ``slot``; if the last row moved into its place: (from, to, its slot)."""
        row = int(self.phys[slot])
        if row < 0:
            return None
        self.version += 1
        self.phys[slot] = -1
        self.count -= 1
        last = self.first + self.count
        other = int(self.slot_at[last])
        self.slot_at[last] = -1
        if row == last:
            return None
        self.slot_at[row] = other
        self.phys[other] = row
        return last, row, other


@dataclass(frozen=True)
class Layout:
    """A step's rows: ``slots`` sorted by physical row, and how to get there and back.

    ``order``: the step's rows in that order (None: already in it), with
    ``index`` and ``host_index``, the same on the model's device and the CPU.
    """

    key: tuple[int, bytes]
    slots: np.ndarray[Any, Any]
    order: np.ndarray[Any, Any] | None
    index: torch.Tensor | None
    host_index: torch.Tensor | None
    write_rows: torch.Tensor  # (B, 1) physical rows, on the device
    read: slice | torch.Tensor  # the physical rows: a run, or an index


class StepPlanner:
    """Lengths and physical rows of ``slots`` sequences of at most ``max_length`` tokens."""

    def __init__(
        self, slots: int, max_length: int, device: torch.device, first_row: int = 0
    ) -> None:
        self.lengths = np.zeros(slots, dtype=np.int64)
        self.rows = PhysicalRows(slots, first_row)
        self.max_length = max_length
        self._device = device
        self._layout: Layout | None = None
        self._pinned = device.type == "cuda"
        # decode positions: written on the host, one copy to the device (none on the CPU)
        self._host = torch.zeros((slots, 1), dtype=torch.int64, pin_memory=self._pinned)
        self._host_view = self._host.numpy()
        self._positions = self._host if device.type == "cpu" else self._host.to(device)
        self._first: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # count: (device, host)
        self._copied: Any = None  # a CUDA event: the last copy from the host buffer is done
        self._follows: Layout | None = None  # the last step: a decode over it, committed
        self._kv_length = 0
        self.followed = False  # whether the last decode step followed one over its rows

    def layout(self, slots: np.ndarray[Any, Any]) -> Layout:
        """The layout of a step over ``slots`` (every one mapped to a row)."""
        key = (self.rows.version, slots.tobytes())
        if self._layout is None or self._layout.key != key:
            self._layout = self._new_layout(key, slots)
        return self._layout

    def _new_layout(self, key: tuple[int, bytes], slots: np.ndarray[Any, Any]) -> Layout:
        order: np.ndarray[Any, Any] | None = np.argsort(self.rows.phys[slots], kind="stable")
        assert order is not None
        if (order == np.arange(len(slots))).all():
            order = None
            slots = slots.copy()  # kept: the caller's array may change after this step
        else:
            slots = slots[order]
        rows = self.rows.phys[slots]
        device = self._device
        first, last = int(rows[0]), int(rows[-1])
        run = last - first == len(rows) - 1
        host_index = None if order is None else torch.from_numpy(order)
        return Layout(
            key=key,
            slots=slots,
            order=order,
            index=None if host_index is None else host_index.to(device),
            host_index=host_index,
            write_rows=on_device(rows[:, None], device),
            read=slice(first, last + 1) if run else on_device(rows, device),
        )

    def readmit(self, slots: np.ndarray[Any, Any]) -> list[int]:
        """The positions in ``slots`` of slots with no row, each given one now: a row
        that a step which raised had added, kept for the retry of that step."""
        if self._layout is not None and self._layout.key == (self.rows.version, slots.tobytes()):
            return []  # the rows of the last step, every one mapped since
        missing: list[int] = np.flatnonzero(self.rows.phys[slots] < 0).tolist()
        for j in missing:
            self.rows.add(int(slots[j]))
        return missing

    def plan(
        self, slots: np.ndarray[Any, Any], mask: Any
    ) -> tuple[Layout, np.ndarray[Any, Any] | None, torch.Tensor, Plan]:
        """The step over ``slots`` whose real tokens are ``mask`` (B, W): its layout, each
        row's count of new tokens in the layout's order (None: one each, a decode step),
        the positions and the cache's plan."""
        layout = self.layout(slots)
        width = int(mask.shape[1])
        if width == 1:
            return layout, None, *self.decode(layout)
        self._follows = None
        counts = in_order(mask.sum(dim=1).numpy(force=True), layout.order)
        return layout, counts, *self.prefill(layout, counts, width)

    def decode(self, layout: Layout) -> tuple[torch.Tensor, Plan]:
        """Positions (B, 1) and the cache's plan for one new token in each of ``layout``'s rows.

        A decode step that follows one over the same rows, committed (`advance`), adds one to
        the positions in place, on the device; any other takes them from the lengths."""
        count = len(layout.slots)
        if self._copied is not None:
            self._copied.synchronize()  # the copy only, queued before the last step's forward
        positions, on_host = self._first_rows(count)
        self.followed = self._follows is layout
        self._follows = None  # until this step is committed
        if self.followed:
            positions.add_(1)
            if positions is not on_host:
                on_host.add_(1)  # the host's copy, for what reads it there
            self._kv_length += 1
            return positions, Plan(layout.write_rows, positions, layout.read, self._kv_length)
        host = self._host_view[:count, 0]
        np.take(self.lengths, layout.slots, out=host)
        self._kv_length = int(host.max()) + 1
        if positions is not on_host:
            positions.copy_(on_host, non_blocking=self._pinned)
            if self._pinned:
                self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
                self._copied.record()
        return positions, Plan(layout.write_rows, positions, layout.read, self._kv_length)

    def _first_rows(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decode positions' first ``count`` rows, on the device and the host (views, kept)."""
        views = self._first.get(count)
        if views is None:
            on_host = self._host[:count]
            on_device = on_host if self._positions is self._host else self._positions[:count]
            views = self._first[count] = (on_device, on_host)  # one tensor on the CPU
        return views

    def positions(self, count: int) -> np.ndarray[Any, Any]:
        """The last decode step's positions (``count`` rows, in the layout's order) on the host."""
        return self._host_view[:count, 0]

    def prefill(
        self, layout: Layout, counts: np.ndarray[Any, Any], width: int
    ) -> tuple[torch.Tensor, Plan]:
        """Positions (B, W) and the plan for ``counts`` new tokens a row, left-padded."""
        starts = self.lengths[layout.slots]
        padding = (width - counts)[:, None]
        columns = np.arange(width)[None, :]
        positions = starts[:, None] + columns - padding
        write = np.where(columns >= padding, positions, self.max_length)
        device = self._device
        kv_length = int((starts + counts).max())
        plan = Plan(layout.write_rows, on_device(write, device), layout.read, kv_length)
        return on_device(np.maximum(positions, 0), device), plan

    def advance(self, layout: Layout, counts: np.ndarray[Any, Any] | None) -> None:
        """``layout``'s rows have seen ``counts`` more tokens each (None: one): the step is
        committed."""
        self.lengths[layout.slots] += 1 if counts is None else counts
        self._follows = layout if counts is None else None

    def forget(self) -> None:
        """The last step did not happen after all (its lengths were put back)."""
        self._follows = None


def on_device(array: np.ndarray[Any, Any], device: torch.device) -> torch.Tensor:
    """A host array on ``device``, copied without waiting."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def in_order(values: Any, order: Any) -> Any:
    """``values``' rows in ``order`` (an index array or tensor), or as they are if None."""
    if order is None:
        return values
    if isinstance(values, torch.Tensor):
        return values.index_select(0, torch.as_tensor(order).to(values.device))
    return values[order]
