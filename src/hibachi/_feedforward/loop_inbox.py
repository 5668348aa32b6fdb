"""Answered handles on their way to the event loops that await them, and the
loops' new items on their way to the engine.

Each loop with callers has a `LoopInbox`. The engine appends answered
handles to its ``handles`` and, after each batch, calls `LoopInboxes.flush`:
an inbox that holds handles and has no hop on the way schedules one, through
the loop's `LoopChannel`; the loop then settles every handle it finds,
including those added meanwhile. So a loop busy with other work costs the
engine no wake-up per batch, only one per time the loop gets round to it:
fewer ``call_soon_threadsafe`` calls, fewer self-pipe writes and fewer
hand-offs of the GIL between the engine and the loop.

The other way, the items a loop's callers queue in one turn of the loop
reach the engine together: `hand_over` wakes the engine once, when the turn
ends. A hop of answers ends the same way: the callers it woke run in the
next turn, and when that turn ends the engine learns that their next items,
if any, are queued (`LoopInboxes.wait_turns`). An engine that waits for that
turn before it picks its next batch gets a batch's callers back in one batch,
rather than the first of them alone while the others are still on their way,
and does not run the model while the loop's thread is busy with them.

Why it needs no lock (the GIL orders the steps): the engine appends, then
reads ``_scheduled``; `receive` clears ``_scheduled``, then pops until
empty. A handle appended after `receive` has popped the last one finds the
flag cleared, and the next `post` schedules a new hop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .._core.delivery import Channels, LoopChannel

__all__ = ["LoopInbox", "LoopInboxes", "Settleable"]

_get_running_loop = asyncio._get_running_loop  # the C function: None outside a loop, no raise


class Settleable(Protocol):
    def settle(self) -> None:
        """Hand the outcome over; called in the loop's thread."""


class LoopInbox:
    """The answered handles of one event loop, settled in as few hops as possible."""

    __slots__ = ("_handing_over", "_scheduled", "_wake", "channel", "handles", "turn_ended")

    def __init__(self, channel: LoopChannel, wake: Callable[[], None]) -> None:
        self.channel = channel
        self.handles: deque[Settleable] = deque()  # appended to on the engine's thread
        self._scheduled = False
        self._handing_over = False  # an end-of-turn call is scheduled (loop's thread only)
        self._wake = wake
        self.turn_ended = threading.Event()  # cleared by `post`, set when the turn after ends
        self.turn_ended.set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.channel.loop

    def post(self) -> bool:
        """On the engine's thread: schedule a hop if handles wait and none is on the way.

        The hop leaves at the channel's next flush. True if one was scheduled.
        """
        if self.handles and not self._scheduled:
            self._scheduled = True
            self.turn_ended.clear()
            self.channel.pending.append((self, None))
            return True
        return False

    def hand_over(self) -> None:
        """In the loop's thread, after queueing an item: wake the engine when this
        turn of the loop ends, once however many items the turn queues."""
        if not self._handing_over:
            self._handing_over = True
            self.channel.loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        self._handing_over = False
        self.turn_ended.set()
        self._wake()

    def receive(self, item: Any) -> None:
        """The hop arrived, in the loop's thread: settle everything in the inbox, and
        tell the engine when the callers this wakes have had their turn."""
        self._scheduled = False
        handles = self.handles
        while handles:
            handles.popleft().settle()
        self.hand_over()


class LoopInboxes:
    """The `LoopInbox` of each event loop that has callers, over ``channels``.

    ``wake`` wakes the engine (when a loop hands items over).
    """

    def __init__(self, channels: Channels, wake: Callable[[], None]) -> None:
        self._channels = channels
        self._wake = wake
        self._lock = threading.Lock()
        self._by_loop: dict[asyncio.AbstractEventLoop, LoopInbox] = {}
        self._all: tuple[LoopInbox, ...] = ()

    def flush(self) -> list[LoopInbox]:
        """On the engine's thread, after a batch: post every inbox, then flush the
        channels. Returns the inboxes that a hop is now on its way to."""
        posted = [inbox for inbox in self._all if inbox.post()]
        self._channels.flush()
        return [inbox for inbox in posted if not inbox.channel.dead]

    @staticmethod
    def wait_turns(inboxes: list[LoopInbox], timeout: float) -> None:
        """On the engine's thread: wait until each of ``inboxes`` has settled its
        hop and the turn of its callers has ended, ``timeout`` seconds at most."""
        deadline = time.monotonic() + timeout
        for inbox in inboxes:
            if not inbox.turn_ended.wait(max(0.0, deadline - time.monotonic())):
                return

    def for_current_loop(self) -> LoopInbox | None:
        """The inbox of the running event loop; None outside one."""
        loop = _get_running_loop()
        if loop is None:
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
            inbox = live[loop] = LoopInbox(channel, self._wake)
            self._by_loop = live
            self._all = tuple(live.values())
            return inbox
