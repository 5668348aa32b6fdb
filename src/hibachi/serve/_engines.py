"""The batchers a server owns, one per model, and how requests reach them.

`LanguageEngine` wraps the transformers adapter in `TrackedAdapter`, which
notes when a request's first model step runs (its queue time) and how full
each step is; `EmbeddingEngine` tokenizes texts for a `FeedforwardBatcher`,
admits a request's inputs together, and shortens vectors to ``dimensions``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._autoregressive.batcher import AutoregressiveBatcher
from .._autoregressive.incremental import Accepted, IncrementalModel
from .._autoregressive.stats import MemoryStats
from .._autoregressive.stream import TokenStream
from .._exceptions import InvalidRequest, QueueFull
from .._feedforward.batcher import FeedforwardBatcher
from ._drain import DrainRate
from ._errors import APIError
from ._metrics import Metrics
from ._models import EmbeddingModel, LanguageModel
from ._offload import OFF_LOOP_CHARS, off_loop
from ._settings import ServeSettings

__all__ = ["EmbeddingEngine", "LanguageEngine", "Ticket", "TrackedAdapter", "queue_full"]


@dataclass(eq=False)
class Ticket:
    """A request's ``options``: its sampling settings, and when its first model step ran."""

    sampling: Any  # a mapping, or the adapter's parsed form of it once accepted
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

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> int | Accepted:
        granted = self._inner.check_request(prompt, max_new_tokens, options.sampling)
        if not isinstance(granted, Accepted):
            return granted
        options.sampling = granted.options  # the inner model's form of them, for its steps
        return Accepted(granted.max_new_tokens, options, granted.ends_at_stop_token)

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

        from ..integrations.transformers import CausalLMAdapter, Sampling

        self.name = lm.name
        self.tokenizer = lm.tokenizer
        self.eos_token_id = lm.eos_token_id
        self.vocab_size = int(lm.model.get_input_embeddings().num_embeddings)
        self.default_max_tokens = settings.default_max_tokens
        self.stream_interval = settings.stream_interval
        self.option_names = frozenset(f.name for f in dataclasses.fields(Sampling))
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
                f"{param}: the prompt has {len(ids):,} tokens; this model's maximum context "
                f"length is {self.max_length:,} tokens, which leaves room for a prompt of at "
                f"most {self.max_length - 1:,}",
                param=param,
                code="context_length_exceeded",
            )
        self.check_token_ids(ids, param)

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        """400 naming ``param`` if an id is outside the vocabulary."""
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            shown = str(bad) if bad < 10**12 else f"{str(bad)[:12]}... ({len(str(bad))} digits)"
            raise APIError(
                400,
                f"{param}: token id {shown} is outside the vocabulary "
                f"(0 ... {self.vocab_size - 1})",
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
            found = re.match(r"option (\w+) ", str(exc))
            raise APIError(400, str(exc), param=found.group(1) if found else None) from exc


class EmbeddingEngine:
    """A sentence encoder's `FeedforwardBatcher` and tokenizer.

    A request's inputs are admitted together, while fewer than
    ``max_queue_size`` inputs wait (else 429): the batcher's own queue holds
    ``max_embedding_inputs`` more, so a request of OpenAI's 2,048 inputs gets
    in whatever the queue's size.
    """

    def __init__(self, em: EmbeddingModel, settings: ServeSettings, metrics: Metrics) -> None:
        self.name = em.name
        self.tokenizer = em.tokenizer
        self.max_length = em.max_length
        self.vocab_size = len(em.tokenizer)
        self.dimensions = em.dimensions
        self.matryoshka = em.matryoshka
        self.max_waiting = settings.max_queue_size
        self.drain = DrainRate(settings.drain_window)
        pad = em.tokenizer.pad_token_id or 0
        self.batcher = FeedforwardBatcher(
            em.encoder,
            max_batch_size=settings.max_batch_size,
            pad_value={"input_ids": pad, "attention_mask": 0},
            max_queue_size=settings.max_queue_size + settings.limits.max_embedding_inputs,
        )
        metrics.watch(em.name, self.batcher)

    async def items(self, given: list[Any]) -> list[Any]:
        """Each input (texts, or rows of token ids) as 1-D ``input_ids`` and
        ``attention_mask`` tensors; made off the loop when there are many or long ones."""
        big = sum(len(one) for one in given) > OFF_LOOP_CHARS or len(given) > 64
        if given and isinstance(given[0], str):
            return await off_loop(big, self._text_items, given)
        return await off_loop(big, self._id_items, given)

    def _id_items(self, rows: list[list[int]]) -> list[Any]:
        for i, row in enumerate(rows):
            bad = next((t for t in row if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise APIError(
                    400,
                    f"input[{i}]: token id {str(bad)[:20]} is outside the vocabulary "
                    f"(0 ... {self.vocab_size - 1})",
                    param="input",
                )
        return [_item(row[: self.max_length]) for row in rows]

    def _text_items(self, texts: list[str]) -> list[Any]:
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [_item(row) for row in encoded["input_ids"]]

    def check_dimensions(self, dimensions: int | None) -> None:
        """400 unless the model serves vectors of ``dimensions`` (None: its own)."""
        if dimensions is None or dimensions == self.dimensions:
            return
        if not self.matryoshka:
            own = "" if self.dimensions is None else f"{self.dimensions}-dimensional "
            raise APIError(
                400,
                f"dimensions: {self.name} makes {own}vectors of its own size only "
                "(it was not trained to have them shortened)",
                param="dimensions",
                code="unsupported_value",
            )
        if self.dimensions is not None and dimensions > self.dimensions:
            raise APIError(
                400,
                f"dimensions: {dimensions:,} is more than {self.name}'s {self.dimensions}",
                param="dimensions",
            )

    async def embed(self, items: list[Any], seconds: float | None) -> list[Any]:
        waiting = self.batcher.stats().queue_depth
        if waiting >= self.max_waiting:
            raise queue_full(waiting, "inputs", self.drain)
        handles = []
        try:
            for item in items:
                handles.append(self.batcher.run(item, timeout=seconds))
            results = await asyncio.gather(*handles)
        except BaseException as exc:
            for handle in handles:
                handle.cancel()
            if isinstance(exc, QueueFull):
                raise queue_full(waiting, "inputs", self.drain) from exc
            raise
        self.drain.note_finished()
        return list(results)


def _item(row: Sequence[int]) -> dict[str, Any]:
    import torch

    tensor = torch.tensor(row, dtype=torch.int64)
    return {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}


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
