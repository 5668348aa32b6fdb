"""Each forward pass's rows, positions and cache columns, kept from one step to the next.

The adapter keeps each slot's length (tokens seen) on the host and maps slots
to *lanes* of the cache (`Lanes`), each row's for its life. A step's rows are
passed to the model sorted by lane, so that a run of lanes is read through a
view; a decode step over lanes with gaps between them reads the *span* of
lanes from its first to its last, through a view too, where the attention is
split into runs (`_row_attention`), else through an index (a gather).

What depends only on which rows step (their order, lanes and the index
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

__all__ = ["Lanes", "Layout", "StepPlanner", "in_order", "on_device"]


class Lanes:
    """Slots mapped to the cache's lanes; a row keeps its lane for its life."""

    def __init__(self, slots: int) -> None:
        self.lane = np.full(slots, -1, dtype=np.int64)
        self.count = 0
        self.version = 0  # changes whenever a slot's lane does

    def add(self, slot: int, lane: int) -> None:
        self.lane[slot] = lane
        self.count += 1
        self.version += 1

    def remove(self, slot: int) -> int | None:
        """Unmap ``slot``; the lane it had, if any."""
        lane = int(self.lane[slot])
        if lane < 0:
            return None
        self.lane[slot] = -1
        self.count -= 1
        self.version += 1
        return lane


@dataclass(frozen=True)
class Layout:
    """A step's rows: ``slots`` sorted by lane, and how to get there and back.

    ``order``: the step's rows in that order (None: already in it), with
    ``index`` and ``host_index``, the same on the model's device and the CPU.
    ``lanes``: each row's lane, in that order; ``read`` the lanes as a run (a
    slice) or an index (a gather); ``span`` the lanes from the first to the
    last, a slice (``read`` itself, for a run).
    """

    key: tuple[int, bytes]
    slots: np.ndarray[Any, Any]
    order: np.ndarray[Any, Any] | None
    index: torch.Tensor | None
    host_index: torch.Tensor | None
    lanes: np.ndarray[Any, Any]
    write_rows: torch.Tensor  # (B, 1) lanes, on the device
    read: slice | torch.Tensor
    span: slice

    @property
    def gaps(self) -> bool:
        """Whether lanes are missing between the step's first and last."""
        return not isinstance(self.read, slice)


class StepPlanner:
    """Lengths and lanes of ``slots`` sequences of at most ``max_length`` tokens.

    ``scratch``: the lane a prefill's padding tokens are written to (never read).
    """

    def __init__(self, slots: int, max_length: int, device: torch.device, scratch: int) -> None:
        self.lengths = np.zeros(slots, dtype=np.int64)
        self.rows = Lanes(slots)
        self.max_length = max_length
        self.scratch = scratch
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
        order: np.ndarray[Any, Any] | None = np.argsort(self.rows.lane[slots], kind="stable")
        assert order is not None
        if (order == np.arange(len(slots))).all():
            order = None
            slots = slots.copy()  # kept: the caller's array may change after this step
        else:
            slots = slots[order]
        lanes = self.rows.lane[slots]
        device = self._device
        first, last = int(lanes[0]), int(lanes[-1])
        span = slice(first, last + 1)
        host_index = None if order is None else torch.from_numpy(order)
        return Layout(
            key=key,
            slots=slots,
            order=order,
            index=None if host_index is None else host_index.to(device),
            host_index=host_index,
            lanes=lanes,
            write_rows=on_device(lanes[:, None], device),
            read=span if last - first == len(lanes) - 1 else on_device(lanes, device),
            span=span,
        )

    def missing(self, slots: np.ndarray[Any, Any]) -> list[int]:
        """The positions in ``slots`` of slots with no lane (rows not admitted: a direct
        caller's, or a step that raised had given one, kept for its retry)."""
        if self._layout is not None and self._layout.key == (self.rows.version, slots.tobytes()):
            return []  # the rows of the last step, every one mapped since
        found: list[int] = np.flatnonzero(self.rows.lane[slots] < 0).tolist()
        return found

    def plan(
        self, slots: np.ndarray[Any, Any], mask: Any, spans: bool = False
    ) -> tuple[Layout, np.ndarray[Any, Any] | None, torch.Tensor, Plan]:
        """The step over ``slots`` whose real tokens are ``mask`` (B, W): its layout, each
        row's count of new tokens in the layout's order (None: one each, a decode step),
        the positions and the cache's plan. ``spans``: a decode step over lanes with gaps
        may read their span (the attention splits it into runs)."""
        layout = self.layout(slots)
        width = int(mask.shape[1])
        if width == 1:
            return layout, None, *self.decode(layout, spans)
        self._follows = None
        counts = in_order(mask.sum(dim=1).numpy(force=True), layout.order)
        return layout, counts, *self.prefill(layout, counts, width)

    def decode(self, layout: Layout, spans: bool = False) -> tuple[torch.Tensor, Plan]:
        """Positions (B, 1) and the cache's plan for one new token in each of ``layout``'s rows.

        A decode step that follows one over the same rows, committed (`advance`), adds one to
        the positions in place, on the device; any other takes them from the lengths."""
        count = len(layout.slots)
        if self._copied is not None:
            self._copied.synchronize()  # the copy only, queued before the last step's forward
        positions, on_host = self._first_rows(count)
        self.followed = self._follows is layout
        self._follows = None  # until this step is committed
        read = layout.span if spans else layout.read
        if self.followed:
            positions.add_(1)
            if positions is not on_host:
                on_host.add_(1)  # the host's copy, for what reads it there
            self._kv_length += 1
            return positions, Plan(layout.write_rows, positions, read, self._kv_length)
        host = self._host_view[:count, 0]
        np.take(self.lengths, layout.slots, out=host)
        self._kv_length = int(host.max()) + 1
        if positions is not on_host:
            positions.copy_(on_host, non_blocking=self._pinned)
            if self._pinned:
                self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
                self._copied.record()
        return positions, Plan(layout.write_rows, positions, read, self._kv_length)

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
        """Positions (B, W) and the plan for ``counts`` new tokens a row, left-padded (the
        padding written to the scratch lane, each at its own column there)."""
        starts = self.lengths[layout.slots]
        padding = (width - counts)[:, None]
        columns = np.arange(width)[None, :]
        positions = starts[:, None] + columns - padding
        real = columns >= padding
        lanes = np.where(real, layout.lanes[:, None], self.scratch)
        write = np.where(real, positions, columns)
        device = self._device
        kv_length = int((starts + counts).max())
        plan = Plan(on_device(lanes, device), on_device(write, device), layout.read, kv_length)
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
