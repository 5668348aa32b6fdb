"""One streamed chat completion as its client saw it, over HTTP or in process.

`ChatClient` streams ``POST /v1/chat/completions`` from an OpenAI-compatible
server with a raw ``httpx2`` client (no SDK between the socket and the
clock); `BatcherClient` streams the same request through an in-process
hibachi batcher, for the cost of HTTP. Times are ``time.perf_counter()``.
A chunk counts when it carries content: a first chunk with only the
assistant's role is not a token.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["BatcherClient", "ChatClient", "Record", "Sender"]


@dataclass
class Record:
    """One request: when it was sent, when each chunk of content came, when it ended."""

    sent: float
    chunks: list[float] = field(default_factory=list)
    end: float = math.nan
    text: str = ""
    usage_tokens: int | None = None  # the server's count of output tokens, when it sent one
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunks)

    @property
    def tokens(self) -> int:
        """Output tokens: the server's count, else one per chunk of content."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.chunks)

    @property
    def ttft(self) -> float:
        """Time to first token: from sending to the first chunk of content."""
        return self.chunks[0] - self.sent if self.chunks else math.nan

    @property
    def latency(self) -> float:
        """End-to-end: from sending to the end of the stream."""
        return self.end - self.sent

    @property
    def tpot(self) -> float:
        """Time per output token after the first; 0 for a one-token answer (as vLLM's)."""
        return (self.latency - self.ttft) / (self.tokens - 1) if self.tokens > 1 else 0.0

    @property
    def itl(self) -> list[float]:
        """Inter-token latencies: the gaps between successive chunks of content."""
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


class Sender:
    """What the schedules call: send one chat question, asking for ``max_tokens`` tokens."""

    async def send(self, question: str, max_tokens: int) -> Record:
        raise NotImplementedError


class ChatClient(Sender):
    """Streamed chat completions from the server at ``url`` (an async context manager).

    ``extra``: fields added to every request body (``stream_options``,
    ``ignore_eos``...: those the server accepts, see `accepts`). ``transport``:
    an ``httpx2`` transport in place of the network (tests).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        extra: dict[str, Any] | None = None,
        timeout: float = 600,
        transport: Any = None,
    ) -> None:
        import httpx2

        self.url = url.rstrip("/")
        self.model = model
        self.extra = dict(extra or {})
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
        self._http = httpx2.AsyncClient(
            timeout=timeout, limits=limits, trust_env=False, transport=transport
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    def body(self, question: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            **extra,
        }

    async def send(self, question: str, max_tokens: int) -> Record:
        return await self._stream(self.body(question, max_tokens, self.extra))

    async def accepts(self, extra: dict[str, Any]) -> bool:
        """Whether the server answers a short request carrying ``extra`` without an error."""
        record = await self._stream(self.body("Say hello.", 2, extra))
        return record.error is None

    async def _stream(self, body: dict[str, Any]) -> Record:
        record = Record(sent=time.perf_counter())
        try:
            async with self._http.stream(
                "POST", f"{self.url}/v1/chat/completions", json=body
            ) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode(errors="replace")
                    record.error = f"HTTP {response.status_code}: {text[:200]}"
                else:
                    async for line in response.aiter_lines():
                        if _read_event(line, record):
                            break
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.end = time.perf_counter()
        return record


def _read_event(line: str, record: Record) -> bool:
    """Note one SSE line in ``record``; True at the stream's end (``[DONE]`` or an error)."""
    if not line.startswith("data:"):
        return False
    data = line[5:].strip()
    if data == "[DONE]":
        return True
    event = json.loads(data)
    if "error" in event:
        record.error = str(event["error"])[:200]
        return True
    for choice in event.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            record.chunks.append(time.perf_counter())
            record.text += content
    usage = event.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        record.usage_tokens = int(usage["completion_tokens"])
    return False


class BatcherClient(Sender):
    """The same chat request through an open hibachi batcher in this process: what the
    server does less HTTP, JSON and text (``tokenizer`` renders the chat template)."""

    def __init__(self, batcher: Any, tokenizer: Any) -> None:
        self.batcher = batcher
        self.tokenizer = tokenizer

    async def send(self, question: str, max_tokens: int) -> Record:
        import torch

        from ..models.chat import chat_prompt

        record = Record(sent=time.perf_counter())
        prompt = torch.tensor(chat_prompt(self.tokenizer, question))
        try:
            async for _ in self.batcher.run(prompt, max_new_tokens=max_tokens):
                record.chunks.append(time.perf_counter())
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.end = time.perf_counter()
        return record
