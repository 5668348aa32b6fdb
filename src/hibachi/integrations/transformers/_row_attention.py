"""Decode steps whose attention reads each run of rows only up to that run's longest row.

The slot cache hands every attention layer the keys of all the step's rows up
to the longest one (``Plan.kv_length``); the additive mask blocks, in each
row, the columns past its own position, and those contribute exactly nothing.
`row_attention` is the ``sdpa`` attention function called once per *segment*
of consecutive rows, each reading keys, values and mask only up to its own
longest row: views of what the cache returned, no copy. The outputs are
concatenated back in the rows' order.

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
    """A decode step's rows in runs: ``starts`` of each run, and each run's key length."""

    rows: int
    kv_length: int
    starts: tuple[int, ...]
    lengths: tuple[int, ...]


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
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    assert attention_mask is not None
    parts = []
    ends = (*segments.starts[1:], segments.rows)
    for start, end, length in zip(segments.starts, ends, segments.lengths, strict=True):
        part, _ = sdpa_attention_forward(
            module,
            query[start:end],
            key[start:end, :, :length],
            value[start:end, :, :length],
            attention_mask[start:end, :, :, :length],
            **kwargs,
        )
        parts.append(part)
    return torch.cat(parts), None


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
        and key.shape[0] == rows
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

    def segments(self, layout: object, positions: np.ndarray[Any, Any]) -> Segments | None:
        """The runs of a decode step at ``positions`` (the rows' in the layout's order), or
        None where one run (the whole step) is best."""
        if layout is not self._layout:
            self._layout = layout
            self._starts = np.asarray(_boundaries(positions, self.split_cost), dtype=np.int64)
        if len(self._starts) == 1:
            return None
        lengths = np.maximum.reduceat(positions, self._starts) + 1
        return Segments(
            rows=len(positions),
            kv_length=int(lengths.max()),
            starts=tuple(self._starts.tolist()),
            lengths=tuple(lengths.tolist()),
        )


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
