"""Tensors whose memory the operating system commits page by page, as they are written.

A key/value cache keeps each row's tokens in a *lane*: (lanes, heads,
columns, head_dim), a column per position, so that attention reads a run of
rows through a view, with no copy. Reserved whole, lanes cost every row its
longest possible sequence. On the CPU they need not be: `lane_tensor` maps
anonymous memory that the kernel backs with a page only when the page is first
written (reading an untouched page reads zeros and costs nothing), and
`LaneTensor.release` gives the pages of columns a row no longer holds back to
the system (``madvise(MADV_DONTNEED)``; they read as zeros again). The lanes'
*address space* is reserved, their *memory* follows the tokens written:
virtual memory does the paging, as in vAttention (Prabhu et al., 2024).

Elsewhere (a GPU, or a system without ``mmap``) the tensor is allocated whole
and zeroed, and `release` is a no-op.
"""

from __future__ import annotations

import mmap
import sys
from typing import Any

import torch

__all__ = ["PAGE", "LaneTensor", "lane_tensor"]

PAGE = mmap.PAGESIZE

_MAP_NORESERVE = 0x4000 if sys.platform.startswith("linux") else 0
"""Linux's flag: reserve address space only, not swap (kernel heuristics may refuse
a large private mapping without it)."""


class LaneTensor:
    """A (lanes, heads, columns, dim) tensor; the columns of a lane can be given back."""

    def __init__(self, tensor: torch.Tensor, memory: mmap.mmap | None) -> None:
        self.tensor = tensor
        self._memory = memory  # kept: the tensor's storage is this mapping

    @property
    def paged(self) -> bool:
        """Whether pages are committed as written (and `release` gives them back)."""
        return self._memory is not None

    def release(self, lane: int, start: int, stop: int) -> None:
        """Give back the whole pages of columns ``start`` … ``stop - 1`` of ``lane``, every head."""
        if self._memory is None or stop <= start:
            return
        _, heads, columns, dim = self.tensor.shape
        item = self.tensor.element_size() * dim
        for head in range(heads):
            base = (lane * heads + head) * columns * item
            first = -(-(base + start * item) // PAGE) * PAGE  # whole pages only
            last = (base + stop * item) // PAGE * PAGE
            if last > first:
                self._memory.madvise(mmap.MADV_DONTNEED, first, last - first)


def lane_tensor(shape: tuple[int, int, int, int], dtype: torch.dtype, device: Any) -> LaneTensor:
    """A zeroed lane tensor of ``shape``: committed as written on the CPU, else whole."""
    device = torch.device(device)
    if device.type == "cpu" and hasattr(mmap, "MADV_DONTNEED"):
        size = max(1, _numel(shape) * torch.empty((), dtype=dtype).element_size())
        try:
            memory = mmap.mmap(
                -1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
            )
        except (OSError, ValueError):
            memory = None
        if memory is not None:
            flat = torch.frombuffer(memory, dtype=dtype, count=_numel(shape))
            return LaneTensor(flat.view(shape), memory)
    return LaneTensor(torch.zeros(shape, dtype=dtype, device=device), None)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
