"""Decode steps' attention masks, kept from one step to the next and updated in place.

A decode step over the same rows as the step before, each one position
further (the planner says so: `StepPlanner.followed`), needs the masks that
step had with one more column open in each row (its new key) and, in a sliding
layer, one more closed (the key that left its window). `DecodeMasks` keeps
each kind of layer's additive mask for every row and every cache column,
(rows, columns), and makes that change with one ``scatter_`` per kind
(two for a sliding kind): no mask is built per step.

A rebuild builds the columns up to twice the step's key length (a power of two,
at least `FIRST_COLUMNS`), not all of them: the steps that follow advance
in place until their key length passes what was built, which a lane of the
model's whole context (thousands of columns) then costs only as its rows grow.

Whenever the step is anything else — other rows, another order, a step after
a prefill or after one that raised — the masks are built afresh from the
positions (`ServingPlan.mask_rows`). A step's masks are views of the kept
buffers up to its key length; the next step writes into them, so a step's
masks are good until the next one begins.
"""

from __future__ import annotations

from typing import Any

import torch

from ._architectures import ServingPlan

__all__ = ["FIRST_COLUMNS", "DecodeMasks"]

FIRST_COLUMNS = 256
"""The fewest columns a rebuild builds."""


class DecodeMasks:
    """The masks of decode steps of up to ``rows`` rows, in a cache of ``columns`` columns."""

    def __init__(self, serving: ServingPlan, rows: int, columns: int) -> None:
        self._serving = serving
        self._rows_kept = rows
        self._columns = columns
        self._built = 0  # the columns the kept masks hold, from 0
        self._layout: object = None  # whose masks are kept
        self._kept: dict[str, torch.Tensor] = {}
        self._first: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def masks(
        self,
        layout: object,
        followed: bool,
        positions: torch.Tensor,
        kv_length: int,
        dtype: torch.dtype,
    ) -> Any:
        """The ``attention_mask`` of a decode step over ``layout``'s rows at ``positions``
        (B, 1); ``followed``: the step before was over the same rows, each one position back."""
        count = len(positions)
        follows = followed and layout is self._layout and kv_length <= self._built
        self._layout = None  # until the kept masks are this step's
        if follows:
            self._advance(positions)
        else:
            self._rebuild(positions, count, dtype, kv_length)
        self._layout = layout
        views = {kind: self._rows(kind, count)[1].narrow(3, 0, kv_length) for kind in self._kept}
        return self._serving.with_other_kinds(views, None)

    def _rows(self, kind: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``kind``'s kept masks of the first ``count`` rows, (count, columns) and
        (count, 1, 1, columns): views, kept while the buffer is."""
        views = self._first.get((kind, count))
        if views is None:
            rows = self._kept[kind][:count]
            views = self._first[kind, count] = (rows, rows[:, None, None, :])
        return views

    def _rebuild(
        self, positions: torch.Tensor, count: int, dtype: torch.dtype, kv_length: int
    ) -> None:
        wanted = max(FIRST_COLUMNS, 1 << (2 * kv_length - 1).bit_length())
        self._built = min(self._columns, wanted)
        rows = self._serving.mask_rows(positions, self._built, dtype)
        for kind, built in rows.items():
            kept = self._kept.get(kind)
            if kept is None or kept.dtype != dtype or kept.device != built.device:
                shape = (self._rows_kept, self._columns)
                self._kept[kind] = torch.empty(shape, dtype=dtype, device=built.device)
                self._first.clear()
            self._rows(kind, count)[0][:, : self._built].copy_(built)

    def _advance(self, positions: torch.Tensor) -> None:
        """Each row one position further: its new key opened, and what left a window closed."""
        count = len(positions)
        for kind, kept in self._kept.items():
            rows = self._rows(kind, count)[0]
            window = self._serving.windows[kind]
            if window is not None and window < self._columns:
                # a row not yet a window long closes a column past its own position (already
                # closed): (p - window) mod columns is then above p
                left = (positions - window).remainder_(self._columns)
                rows.scatter_(1, left, torch.finfo(kept.dtype).min)
            rows.scatter_(1, positions, 0.0)
