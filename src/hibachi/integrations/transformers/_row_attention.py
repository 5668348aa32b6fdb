"""Decode steps whose attention reads each run of rows only up to that run's longest row.

The slot cache hands every attention layer the keys of all the step's rows up
to the longest one (``Plan.kv_length``); the additive mask blocks, in each
row, the columns past its own position, and those contribute exactly nothing.
`row_attention` is the ``sdpa`` attention function called once per *segment*
of consecutive rows, each reading keys, values and mask only up to its own
longest row: views of what the cache returned, no copy. The outputs are
concatenated back in the rows' order.

A decode step whose rows' lanes have gaps between them reads the *span* of
lanes from its first to its last (a view: the lanes in the gaps are not the
step's): its rows then always run in segments, each over its own lanes
(``key_starts``), never across a gap.

It is registered with transformers' ``AttentionInterface`` under `NAME`; the
adapter selects it (`selected`) only around a decode step's forward pass of a
model loaded with ``attn_implementation="sdpa"`` and only when the step splits
into more than one segment (`Segmenter`). Whatever it cannot split exactly — a
query of more than one token, no mask, a batch or key length other than the
step's, a position bias — goes to ``sdpa`` unchanged.

Splitting costs one more attention call per segment and layer, and saves the
reads of the columns that the longer rows' segment would have padded. A
segment boundary is placed where the padding it saves is worth more than
``split_cost`` key positions (see ``benchmarks/row_attention.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

__all__ = ["NAME", "Segmenter", "Segments", "row_attention", "selected"]

NAME = "hibachi_row_sdpa"


@dataclass(frozen=True)
class Segments:
    """A decode step's rows in runs: ``starts`` of each run, and each run's key length.

    ``key_starts``: where each run's rows begin in the keys the cache returned,
    which hold ``key_rows`` rows (the span of the step's lanes; None: the
    step's rows themselves, ``starts``); ``key_index`` picks the step's rows
    out of them (for a call the runs do not fit).
    """

    rows: int
    kv_length: int
    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    key_starts: tuple[int, ...] | None = None
    key_rows: int | None = None
    key_index: torch.Tensor | None = None


_current: ContextVar[Segments | None] = ContextVar("hibachi_row_segments", default=None)


def row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``sdpa`` attention, one call per segment of the current step (see the module)."""
    segments = _current.get()
    if segments is None or not _fits(segments, query, key, attention_mask, kwargs):
        if segments is not None and segments.key_index is not None:
            key, value = _own_rows(segments, key, value)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    assert attention_mask is not None
    parts = []
    ends = (*segments.starts[1:], segments.rows)
    keys = segments.key_starts or segments.starts
    for start, end, first, length in zip(
        segments.starts, ends, keys, segments.lengths, strict=True
    ):
        rows = slice(first, first + end - start)
        part, _ = sdpa_attention_forward(
            module,
            query[start:end],
            key[rows, :, :length],
            value[rows, :, :length],
            attention_mask[start:end, :, :, :length],
            **kwargs,
        )
        parts.append(part)
    return torch.cat(parts), None


def _own_rows(
    segments: Segments, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's own rows of keys and values read over the span of its lanes (a copy)."""
    if key.shape[0] != segments.key_rows:
        return key, value
    assert segments.key_index is not None
    index = segments.key_index.to(key.device)
    return key.index_select(0, index), value.index_select(0, index)


def _fits(
    segments: Segments,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> bool:
    """Whether this call is the step's decode attention, which segments split exactly."""
    rows, length = segments.rows, segments.kv_length
    return (
        query.shape[2] == 1
        and query.shape[0] == rows
        and key.shape[0] == (segments.key_rows or rows)
        and key.shape[2] == length
        and isinstance(mask, torch.Tensor)
        and mask.dim() == 4
        and mask.shape[0] == rows
        and mask.shape[-1] == length
        and kwargs.get("position_bias") is None
    )


AttentionInterface.register(NAME, row_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def selected(config: Any, segments: Segments) -> Iterator[None]:
    """Within the block, ``config``'s model attends with `row_attention` over ``segments``."""
    implementation = config._attn_implementation
    token = _current.set(segments)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = implementation
        _current.reset(token)


class Segmenter:
    """Splits a decode step's rows into runs, where a split saves more than ``split_cost``.

    The boundaries are kept while the step's rows are the same ``Layout`` (every
    decode step over the same rows): all rows then grow by one token a step, and
    the padding each boundary saves stays what it was. Each run's key length is
    taken afresh every step, so a kept boundary is never wrong, at worst not the best.
    """

    def __init__(self, split_cost: int) -> None:
        self.split_cost = split_cost
        self._layout: object = None
        self._starts: np.ndarray[Any, Any] = np.zeros(1, dtype=np.int64)
        self._keys: dict[str, Any] = {}

    def segments(
        self,
        layout: object,
        positions: np.ndarray[Any, Any],
        lanes: np.ndarray[Any, Any] | None = None,
    ) -> Segments | None:
        """The runs of a decode step at ``positions`` (the rows' in the layout's order), or
        None where one run (the whole step) is best. ``lanes``: the rows' lanes, read over
        their span, where some are missing between them (runs then end at every gap)."""
        if layout is not self._layout:
            self._layout = layout
            starts = _boundaries(positions, self.split_cost)
            self._keys = {}
            if lanes is not None:
                starts = sorted({*starts, *_gaps(lanes)})
                first = int(lanes[0])
                self._keys = {
                    "key_starts": tuple((lanes[starts] - first).tolist()),
                    "key_rows": int(lanes[-1]) - first + 1,
                    "key_index": torch.from_numpy(lanes - first),
                }
            self._starts = np.asarray(starts, dtype=np.int64)
        if len(self._starts) == 1:
            return None
        lengths = np.maximum.reduceat(positions, self._starts) + 1
        return Segments(
            rows=len(positions),
            kv_length=int(lengths.max()),
            starts=tuple(self._starts.tolist()),
            lengths=tuple(lengths.tolist()),
            **self._keys,
        )


def _gaps(lanes: np.ndarray[Any, Any]) -> list[int]:
    """The rows whose lane does not follow the lane of the row before."""
    return (np.flatnonzero(np.diff(lanes) != 1) + 1).tolist()


def _boundaries(positions: np.ndarray[Any, Any], split_cost: int) -> list[int]:
    """Where runs start: a row joins the run before it unless that pads more than it saves."""
    values = positions.tolist()
    starts, top, count = [0], values[0], 1
    for i, value in enumerate(values[1:], start=1):
        joined = (count + 1) * max(top, value)
        apart = count * top + value + split_cost
        if joined <= apart:
            top, count = max(top, value), count + 1
        else:
            starts.append(i)
            top, count = value, 1
    return starts
