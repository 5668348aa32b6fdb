"""Answered handles on their way to the event loops that await them.

Each loop with callers has a `LoopInbox`. The engine appends answered
handles to its ``handles`` and, after each batch, calls `LoopInboxes.flush`:
an inbox that holds handles and has no hop on the way schedules one, through
the loop's `LoopChannel`; the loop then settles every handle it finds,
including those added meanwhile. So a loop busy with other work costs the
engine no wake-up per batch, only one per time the loop gets round to it:
fewer ``call_soon_threadsafe`` calls, fewer self-pipe writes and fewer
hand-offs of the GIL between the engine and the loop.

Why it needs no lock (the GIL orders the steps): the engine appends, then
reads ``_scheduled``; `receive` clears ``_scheduled``, then pops until
empty. A handle appended after `receive` has popped the last one finds the
flag cleared, and the next `post` schedules a new hop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Protocol

from .._core.delivery import Channels, LoopChannel

__all__ = ["LoopInbox", "LoopInboxes", "Settleable"]


class Settleable(Protocol):
    def settle(self) -> None:
        """Hand the outcome over; called in the loop's thread."""


class LoopInbox:
    """The answered handles of one event loop, settled in as few hops as possible."""

    __slots__ = ("_scheduled", "channel", "handles")

    def __init__(self, channel: LoopChannel) -> None:
        self.channel = channel
        self.handles: deque[Settleable] = deque()  # appended to on the engine's thread
        self._scheduled = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.channel.loop

    def post(self) -> None:
        """On the engine's thread: schedule a hop if handles wait and none is on the way.

        The hop leaves at the channel's next flush.
        """
        if self.handles and not self._scheduled:
            self._scheduled = True
            self.channel.pending.append((self, None))

    def receive(self, item: Any) -> None:
        """The hop arrived, in the loop's thread: settle everything in the inbox."""
        self._scheduled = False
        handles = self.handles
        while handles:
            handles.popleft().settle()


class LoopInboxes:
    """The `LoopInbox` of each event loop that has callers, over ``channels``."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._lock = threading.Lock()
        self._by_loop: dict[asyncio.AbstractEventLoop, LoopInbox] = {}
        self._all: tuple[LoopInbox, ...] = ()

    def flush(self) -> None:
        """On the engine's thread, after a batch: post every inbox, then flush the channels."""
        for inbox in self._all:
            inbox.post()
        self._channels.flush()

    def for_current_loop(self) -> LoopInbox | None:
        """The inbox of the running event loop; None outside one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        inbox = self._by_loop.get(loop)
        if inbox is None or inbox.channel.dead:
            inbox = self._add(loop)
        return inbox

    def _add(self, loop: asyncio.AbstractEventLoop) -> LoopInbox:
        channel = self._channels.channel_for_current_loop()
        assert channel is not None and channel.loop is loop
        with self._lock:
            live = {k: v for k, v in self._by_loop.items() if not (v.channel.dead or k.is_closed())}
            inbox = live[loop] = LoopInbox(channel)
            self._by_loop = live
            self._all = tuple(live.values())
            return inbox
