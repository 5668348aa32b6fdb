"""A group of rows' key/value memory: lanes, blocks under a budget, prefixes, the tokens seen.

`GroupMemory` is what `CausalLMAdapter.admit`, ``reserve`` and ``release``
act on, for one group of slots (all of them, or a pipeline stage group's):
it gives a new row a lane and the cached prefix of its prompt (copied into
its lane, in every cache, where it is not in place), holds blocks as rows
grow, and keeps the tokens each lane holds, so that full blocks can be named
for the prefix cache once a step is committed (`record`).

`kv_budget` and `token_bytes` size the budget: the bytes of keys and values
one token takes, found by running the model on one token, and the default
budget, a share of the memory available where the cache lives.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from ..._autoregressive.stats import MemoryStats
from ..._exceptions import ConfigurationError
from ._kv_cache import LaneCache
from ._lane_blocks import LaneBlocks
from ._step_plan import Layout, StepPlanner

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_SHARE",
    "CacheSizes",
    "GroupMemory",
    "cache_sizes",
    "kv_budget",
    "memory_stats",
    "model_context",
    "token_bytes",
]

DEFAULT_SHARE = 0.5
"""The share of the memory available when the cache is made (the CPU's ``MemAvailable``,
a GPU's free memory) that ``kv_cache_bytes=None`` gives the keys and values."""

DEFAULT_CONTEXT = 4096
"""``max_length`` for a model whose config names no context length (a Mamba, say)."""

_CONTEXT_NAMES = (
    "max_position_embeddings",
    "n_positions",
    "max_sequence_length",
    "max_seq_len",
    "seq_length",
    "n_ctx",
)


def model_context(model: Any) -> int:
    """The tokens ``model`` was made for: its config's ``max_position_embeddings`` or the
    equivalent, else `DEFAULT_CONTEXT`."""
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in _CONTEXT_NAMES:
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_CONTEXT


@dataclass(frozen=True)
class CacheSizes:
    """How big the cache is: its lanes' ``columns``, blocks of ``block_size`` tokens of
    ``bytes_per_token`` each, and ``capacity`` blocks per group of slots (the budget,
    ``budget`` bytes, shared evenly among the groups)."""

    max_length: int
    block_size: int
    columns: int
    bytes_per_token: int
    budget: int
    capacity: int
    prefix_caching: bool

    @property
    def bytes_per_block(self) -> int:
        return self.bytes_per_token * self.block_size

    @property
    def row_tokens(self) -> int:
        """The most tokens one row can hold: its group's budget, at most ``max_length``."""
        return min(self.max_length, self.capacity * self.block_size)

    def group(self, planner: StepPlanner, caches: Sequence[LaneCache], lanes: range) -> GroupMemory:
        """The memory of the group of ``lanes`` (its slots' lanes, in ``caches``)."""
        return GroupMemory(
            planner,
            caches,
            lanes,
            capacity=self.capacity,
            block_size=self.block_size,
            prefix_caching=self.prefix_caching,
        )


def cache_sizes(
    model: Any,
    cache_name: str,
    attention: list[bool],
    *,
    max_length: int,
    block_size: int,
    kv_cache_bytes: int | None,
    prefix_caching: bool,
    groups: int,
) -> CacheSizes:
    """The sizes of ``model``'s cache; `ConfigurationError` if the budget holds no block."""
    per_token = token_bytes(model, cache_name, attention) if any(attention) else 0
    budget = kv_budget(kv_cache_bytes, next(model.parameters()).device)
    per_block = per_token * block_size
    capacity = budget // per_block // groups if per_token else sys.maxsize // 4
    if capacity < 1:
        shared = f", shared by {groups} groups of stages" if groups > 1 else ""
        raise ConfigurationError(
            f"kv_cache_bytes={budget} holds no block of {block_size} tokens "
            f"({per_block} bytes of keys and values{shared})"
        )
    return CacheSizes(
        max_length=max_length,
        block_size=block_size,
        columns=-(-max_length // block_size) * block_size,
        bytes_per_token=per_token,
        budget=budget,
        capacity=capacity,
        prefix_caching=prefix_caching,
    )


class GroupMemory:
    """The lanes ``lanes`` (of ``caches``) of a group whose rows ``planner`` plans."""

    def __init__(
        self,
        planner: StepPlanner,
        caches: Sequence[LaneCache],
        lanes: range,
        *,
        capacity: int,
        block_size: int,
        prefix_caching: bool,
    ) -> None:
        self.planner = planner
        self._caches = caches
        self._first = lanes.start
        self._reserved: bytes | None = None  # the rows `reserve` last held blocks for
        self.blocks = LaneBlocks(
            len(lanes),
            capacity=capacity,
            block_size=block_size,
            columns=caches[0].columns,
            prefix_caching=prefix_caching,
            forget=self._forget,
        )

    def admit(self, slot: int, prompt: np.ndarray[Any, Any]) -> int | None:
        """Give ``slot`` a lane and the blocks of ``prompt``; the prompt tokens it holds
        already (a cached prefix), or None if the blocks are not free."""
        admission = self.blocks.admit(prompt)
        if admission is None:
            return None
        lane = self._first + admission.lane
        self.planner.rows.add(slot, lane)  # first: a copy that raises is undone by release
        self.planner.lengths[slot] = 0
        if admission.source is not None:
            source = self._first + admission.source
            for cache in self._caches:
                cache.copy_lane(source, lane, admission.held)
            self.blocks.copied(admission, prompt)  # named once they are there
        self.blocks.settle()
        self.planner.lengths[slot] = admission.held
        return admission.held

    def place(self, slot: int) -> None:
        """Give ``slot`` a lane without admission (a step fed it first): nothing held."""
        self.planner.rows.add(slot, self._first + self.blocks.bare())
        self.planner.lengths[slot] = 0

    def reserve(self, slots: np.ndarray[Any, Any], counts: Any) -> bool:
        """Hold the blocks of ``counts`` more tokens in each of ``slots``; False if not free."""
        planner = self.planner
        lanes = self._local(planner.rows.lane[slots])
        held = self.blocks.reserve(lanes, planner.lengths[slots] + counts)
        self._reserved = slots.tobytes() if held else None
        return held

    def hold(self, slots: np.ndarray[Any, Any], mask: Any) -> None:
        """Hold the blocks of a step over ``slots`` whose new tokens are ``mask`` (B, W),
        unless `reserve` was just asked for these rows (as the batcher does before each
        step); RuntimeError if they are not free (a caller stepping the adapter itself)."""
        reserved, self._reserved = self._reserved, None
        if reserved == slots.tobytes():
            return
        counts = 1 if mask.shape[1] == 1 else mask.sum(dim=1).numpy(force=True)
        if not self.reserve(slots, counts):
            raise RuntimeError("the KV cache has no memory for this step's tokens")
        self._reserved = None

    def _local(self, lanes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return lanes if self._first == 0 else lanes - self._first

    def record(self, layout: Layout, counts: np.ndarray[Any, Any] | None, tokens: Any) -> None:
        """A committed step fed ``tokens`` (the layout's order; ``counts`` each, left-padded,
        None: one each) to ``layout``'s rows: keep them, name the blocks they filled."""
        history = self.blocks.history
        if history is None:
            return
        lanes = self._local(layout.lanes)
        ends = self.planner.lengths[layout.slots]
        fed = np.asarray(tokens.numpy(force=True), dtype=np.int64)
        if counts is None:
            history[lanes, ends - 1] = fed[:, -1]
        else:
            width = fed.shape[1]
            for row, (lane, end, count) in enumerate(zip(lanes, ends, counts, strict=True)):
                history[lane, end - count : end] = fed[row, width - count :]
        self.blocks.name(lanes, ends)

    def release(self, slot: int) -> None:
        lane = self.planner.rows.remove(slot)
        if lane is not None:
            self.blocks.release(lane - self._first)
        self.planner.lengths[slot] = 0

    def _forget(self, lane: int, start: int, stop: int) -> None:
        for cache in self._caches:
            cache.forget(self._first + lane, start, stop)


def memory_stats(groups: Sequence[GroupMemory], bytes_per_block: int) -> MemoryStats:
    """The groups' blocks, added up."""
    parts = [group.blocks for group in groups]
    used = sum(b.used for b in parts)
    cached = sum(b.cached for b in parts)
    return MemoryStats(
        blocks_used=used,
        blocks_cached=cached,
        blocks_free=sum(b.capacity for b in parts) - used - cached,
        block_size=parts[0].block_size,
        bytes_per_block=bytes_per_block,
        peak_blocks=sum(b.peak for b in parts),
        prefix_cache_queries=sum(b.queries for b in parts),
        prefix_cache_hits=sum(b.hits for b in parts),
    )


def token_bytes(model: Any, cache_name: str, attention: list[bool]) -> int:
    """The bytes of keys and values one token takes in ``model``'s attention layers: what
    its own cache keeps after a forward pass over one token."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    inputs = {"input_ids": torch.zeros((1, 1), dtype=torch.long, device=device)}
    try:
        with torch.inference_mode():
            model(**inputs, **{cache_name: cache}, use_cache=True)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot size {type(model).__name__}'s keys and values: a forward pass over one "
            f"token raised {type(exc).__name__}: {exc}"
        ) from exc
    total = 0
    for layer, kv in zip(cache.layers, attention, strict=False):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if kv and isinstance(tensor, torch.Tensor):
                total += tensor[..., -1:, :].numel() * tensor.element_size()
    return total


def kv_budget(kv_cache_bytes: int | None, device: torch.device) -> int:
    """The bytes the keys and values may take: ``kv_cache_bytes``, or `DEFAULT_SHARE` of
    the memory available where they live."""
    if kv_cache_bytes is not None:
        return kv_cache_bytes
    return int(DEFAULT_SHARE * _available(device))


def _available(device: torch.device) -> int:
    """The memory available on ``device`` now, in bytes."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 30
