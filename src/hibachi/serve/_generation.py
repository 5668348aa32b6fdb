"""`Generation`: one completion request, from its prompt ids to text pieces.

It submits the prompt (refusals surface before any response is sent),
turns the tokens into text with `TextAssembler`, ends at a stop string,
and records the request's metrics however it ends: finished, cut short by
its client, timed out, failed, or interrupted by the server's shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .._autoregressive.stream import TokenStream
from .._exceptions import Timeout
from ._engines import LanguageEngine, Ticket
from ._errors import APIError
from ._metrics import Reason
from ._offload import Turns
from ._text import TextAssembler

__all__ = ["Generation", "GenerationParams"]


@dataclass(frozen=True)
class GenerationParams:
    """A validated completion request, in token ids."""

    prompt: list[int]
    max_tokens: int
    sampling: dict[str, Any] | None
    stop: tuple[str, ...]
    timeout: float | None


class Generation:
    """One request's lifetime. `start` submits; `pieces` yields its text as it comes."""

    def __init__(
        self,
        engine: LanguageEngine,
        params: GenerationParams,
        *,
        arrived: float,
        live: set[Generation],
    ) -> None:
        self.engine = engine
        self.params = params
        self.arrived = arrived
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self._live = live
        self._ticket = Ticket(params.sampling)
        self._assembler = TextAssembler(engine.tokenizer, params.stop, context=params.prompt)
        self._stream: TokenStream | None = None
        self._interrupted = False
        self._first: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.params.prompt)

    def start(self) -> None:
        """Submit the prompt: raises `APIError` (400, 429) when it is refused."""
        p = self.params
        try:
            self._stream = self.engine.submit(p.prompt, p.max_tokens, self._ticket, p.timeout)
        except APIError:
            self._metric_end("refused")
            raise
        self._live.add(self)

    def interrupt(self) -> None:
        """End the request early: the server is shutting down."""
        self._interrupted = True
        if self._stream is not None:
            self._stream.cancel()

    async def text(self) -> str:
        """The whole completion."""
        return "".join([piece async for piece in self.pieces()])

    async def pieces(self) -> AsyncIterator[str]:
        """The completion's text, piece by piece; ``finish_reason`` is set at the end.

        The first token always yields, its text or "" when its text is held back
        (an unfinished character, a possible stop string): a stream's first
        chunk goes out with the first token.
        """
        stream = self._stream
        assert stream is not None, "start() first"
        reason: Reason = "failed"
        try:
            async for piece in self._decode(stream):
                yield piece
            reason = "stop" if self.finish_reason == "stop" else "budget"
        except (asyncio.CancelledError, GeneratorExit):
            reason = "cancelled"
            raise
        except Timeout:
            reason = "timed_out"
            raise
        except APIError as exc:
            reason = "shutdown" if exc.code == "shutdown" else "failed"
            raise
        finally:
            stream.cancel()
            self._live.discard(self)
            self._metric_end(reason)

    async def _decode(self, stream: TokenStream) -> AsyncIterator[str]:
        assembler = self._assembler
        last = -1
        turns = Turns()  # tokens already delivered are read without waiting: yield now and then
        async for token in stream:
            last = int(token)
            self._count_token()
            piece = assembler.add(last)
            if piece or self.completion_tokens == 1:
                yield piece
            if assembler.stopped:
                break
            await turns.pause()
        if self._interrupted:
            raise APIError(503, "the server is shutting down", kind="server_error", code="shutdown")
        rest = assembler.finish()
        if rest:
            yield rest
        stopped = assembler.stopped or last == self.engine.eos_token_id
        self.finish_reason = "stop" if stopped else "length"

    def _count_token(self) -> None:
        if self._first is None:
            self._first = time.monotonic()
            name = self.engine.name
            self.engine.metrics.ttft.labels(name).observe(self._first - self.arrived)
        self.completion_tokens += 1

    def _metric_end(self, reason: Reason) -> None:
        metrics, name = self.engine.metrics, self.engine.name
        now = time.monotonic()
        metrics.end(name, reason)
        if reason == "refused":
            return
        metrics.e2e.labels(name).observe(now - self.arrived)
        metrics.prompt.labels(name).inc(self.prompt_tokens)
        metrics.generated.labels(name).inc(self.completion_tokens)
        started = self._ticket.started
        if started is not None:
            metrics.queue_time.labels(name).observe(max(0.0, started - self.arrived))
        if self._first is not None and self.completion_tokens > 1:
            per_token = (now - self._first) / (self.completion_tokens - 1)
            metrics.per_token.labels(name).observe(per_token)
        if reason in ("stop", "budget"):
            self.engine.drain.note_finished()
