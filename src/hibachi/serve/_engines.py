"""The batchers a server owns, one per model, and how requests reach them.

`LanguageEngine` wraps the transformers adapter in `TrackedAdapter`, which
notes when a request's first model step runs (its queue time) and how full
each step is; `EmbeddingEngine` tokenizes texts for a `FeedforwardBatcher`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._autoregressive.batcher import AutoregressiveBatcher
from .._autoregressive.incremental import IncrementalModel
from .._autoregressive.stats import MemoryStats
from .._autoregressive.stream import TokenStream
from .._exceptions import InvalidRequest, QueueFull
from .._feedforward.batcher import FeedforwardBatcher
from ._drain import DrainRate
from ._errors import APIError
from ._metrics import Metrics
from ._models import EmbeddingModel, LanguageModel
from ._settings import ServeSettings

__all__ = ["EmbeddingEngine", "LanguageEngine", "Ticket", "TrackedAdapter", "queue_full"]


@dataclass(eq=False)
class Ticket:
    """A request's ``options``: its sampling settings, and when its first model step ran."""

    sampling: dict[str, Any] | None
    started: float | None = None


class TrackedAdapter(IncrementalModel):
    """An `IncrementalModel` that stamps each request's first step, then delegates."""

    def __init__(self, inner: IncrementalModel, on_step: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_step = on_step

    def step(self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any], options: list[Any]) -> Any:
        now = time.monotonic()
        for ticket in options:
            if ticket.started is None:
                ticket.started = now
        self._on_step(len(slots))
        return self._inner.step(tokens, mask, slots, [t.sampling for t in options])

    def release(self, slot: int) -> None:
        self._inner.release(slot)

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> int:
        granted: int = self._inner.check_request(prompt, max_new_tokens, options.sampling)
        return granted

    def admit(self, slot: int, prompt: Any, options: Any, generated: int) -> int | None:
        return self._inner.admit(slot, prompt, options.sampling, generated)

    def reserve(self, slots: np.ndarray[Any, Any], counts: Any) -> bool:
        return self._inner.reserve(slots, counts)

    def memory_stats(self) -> MemoryStats | None:
        return self._inner.memory_stats()


class LanguageEngine:
    """A causal LM's batcher, its tokenizer, and its drain rate."""

    def __init__(self, lm: LanguageModel, settings: ServeSettings, metrics: Metrics) -> None:
        import torch

        from ..integrations.transformers import CausalLMAdapter

        self.name = lm.name
        self.tokenizer = lm.tokenizer
        self.eos_token_id = lm.eos_token_id
        self.vocab_size = int(lm.model.get_input_embeddings().num_embeddings)
        self.default_max_tokens = settings.default_max_tokens
        self.stream_interval = settings.stream_interval
        self.metrics = metrics
        self.drain = DrainRate(settings.drain_window)
        fill = metrics.batch_fill.labels(lm.name)
        size = settings.max_batch_size
        adapter = CausalLMAdapter(
            lm.model,
            slots=size,
            max_length=settings.max_length,
            kv_cache_bytes=settings.kv_cache_bytes,
        )
        self.max_length = adapter.max_length  # the model's context, unless the settings say
        pad = lm.eos_token_id if lm.pad_token_id is None else lm.pad_token_id
        self.batcher = AutoregressiveBatcher(
            TrackedAdapter(adapter, lambda rows: fill.observe(rows / size)),
            stop_token=torch.tensor(lm.eos_token_id),
            pad_value=torch.tensor(pad),
            max_batch_size=size,
            max_queue_size=settings.max_queue_size,
            max_new_tokens=self.max_length,
        )
        metrics.watch(lm.name, self.batcher)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def check_prompt(self, ids: Sequence[int], param: str) -> None:
        if not ids:
            raise APIError(400, f"{param}: the prompt has no tokens", param=param)
        if len(ids) >= self.max_length:
            raise APIError(
                400,
                f"{param}: the prompt has {len(ids)} tokens; this server takes at most "
                f"{self.max_length - 1}",
                param=param,
            )
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise APIError(
                400,
                f"{param}: token id {bad[0]} is outside the vocabulary (0 … {self.vocab_size - 1})",
                param=param,
            )

    def submit(
        self, ids: list[int], max_tokens: int, ticket: Ticket, timeout: float | None
    ) -> TokenStream:
        """Queue the prompt; 429 with ``Retry-After`` when the queue is full."""
        import torch

        try:
            return self.batcher.run(
                torch.tensor(ids), max_new_tokens=max_tokens, timeout=timeout, options=ticket
            )
        except QueueFull as exc:
            raise queue_full(self.batcher.stats().queue_depth, "requests", self.drain) from exc
        except InvalidRequest as exc:
            raise APIError(400, str(exc)) from exc


class EmbeddingEngine:
    """A sentence encoder's `FeedforwardBatcher` and tokenizer."""

    def __init__(self, em: EmbeddingModel, settings: ServeSettings, metrics: Metrics) -> None:
        self.name = em.name
        self.tokenizer = em.tokenizer
        self.max_length = em.max_length
        self.vocab_size = len(em.tokenizer)
        self.drain = DrainRate(settings.drain_window)
        pad = em.tokenizer.pad_token_id or 0
        self.batcher = FeedforwardBatcher(
            em.encoder,
            max_batch_size=settings.max_batch_size,
            pad_value={"input_ids": pad, "attention_mask": 0},
            max_queue_size=settings.max_queue_size,
        )
        metrics.watch(em.name, self.batcher)

    def items(self, texts: Sequence[str] | None, ids: Sequence[Sequence[int]] | None) -> list[Any]:
        """Each input as 1-D ``input_ids`` and ``attention_mask`` tensors."""
        import torch

        if texts is not None:
            encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
            ids = encoded["input_ids"]
        assert ids is not None
        items = []
        for row in ids:
            tensor = torch.tensor(list(row)[: self.max_length], dtype=torch.int64)
            items.append({"input_ids": tensor, "attention_mask": torch.ones_like(tensor)})
        return items

    async def embed(self, items: list[Any], seconds: float | None) -> list[Any]:
        handles = []
        try:
            for item in items:
                handles.append(self.batcher.run(item, timeout=seconds))
        except QueueFull as exc:
            for handle in handles:
                handle.cancel()
            raise queue_full(self.batcher.stats().queue_depth, "inputs", self.drain) from exc
        try:
            results = await asyncio.gather(*handles)
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise
        self.drain.note_finished()
        return list(results)


def queue_full(waiting: int, what: str, drain: DrainRate) -> APIError:
    """429 for a full queue of ``waiting`` ``what``, with the ``Retry-After`` of ``drain``."""
    seconds = drain.retry_after(waiting)
    return APIError(
        429,
        f"the queue is full ({waiting} {what} waiting): retry in {seconds} s",
        kind="rate_limit_error",
        code="queue_full",
        retry_after=seconds,
    )
