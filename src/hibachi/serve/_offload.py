"""Keeping the event loop free: big work off it, long work broken into turns.

Parsing a large body, tokenizing a long text, rendering a long chat and
encoding a large answer run on a worker thread (`off_loop`); below a size
where they take a fraction of a millisecond they stay on the loop, where a
thread hop would cost more than the work. Everything that runs there holds
the loop only briefly: Python code is preempted every few milliseconds (the
interpreter's switch interval), the tokenizers release the GIL, and the C
and Rust parsers that do not are handed at most ``max_request_bytes``.

Work that stays on the loop but repeats per token (detokenizing, stop
matching) is bounded per token by the request limits, and a request whose
tokens arrive faster than it handles them yields to the loop every
`Turns.budget` seconds (`Turns.pause`), so one fast stream never holds the
others up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["OFF_LOOP_BYTES", "OFF_LOOP_CHARS", "Turns", "off_loop"]

T = TypeVar("T")

OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are parsed on a worker thread
OFF_LOOP_CHARS = 4 * 1024  # texts longer than this are tokenized or rendered on one


async def off_loop(big: bool, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)``: on a worker thread when ``big``, else here."""
    if big:
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)


class Turns:
    """Counts the time a task has held the loop since it last yielded."""

    budget = 0.002  # seconds of work per turn of the loop

    def __init__(self) -> None:
        self._since = time.monotonic()

    async def pause(self) -> None:
        """Yield to the loop if this task has held it for `budget` seconds."""
        now = time.monotonic()
        if now - self._since >= self.budget:
            await asyncio.sleep(0)
            self._since = time.monotonic()
