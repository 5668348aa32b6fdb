"""The caller's side of a hibachi deployment: requests that cancel when the caller leaves.

A Serve response is cancelled in the replica only by its ``cancel()``: a
caller that leaves an ``async for`` over a raw streaming response early, or
whose task is cancelled while it awaits one, leaves the request running in
the replica (Ray 2.60). `stream` and `call` wrap the response so that both
cancel it, and with it the row in the replica's batcher. When the replica
dies (its process, or its node) before the request ends, both raise
`ReplicaLost` rather than Ray's actor error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, NoReturn, final

import ray

from ._errors import ReplicaLost

__all__ = ["RemoteStream", "call", "stream"]


def stream(handle: Any, *args: Any, **kwargs: Any) -> RemoteStream:
    """Send one autoregressive request (the arguments of the batcher's ``run``)
    through a deployment handle; iterate the result for its tokens."""
    return RemoteStream(handle.options(stream=True).run.remote(*args, **kwargs))


async def call(handle: Any, *args: Any, **kwargs: Any) -> Any:
    """Send one feedforward request through a deployment handle and await its result.

    Cancelling the task that awaits cancels the request in the replica.
    """
    response = handle.run.remote(*args, **kwargs)
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise
    except ray.exceptions.RayActorError as exc:
        _lost(exc)


@final
class RemoteStream:
    """The tokens of one request served by a replica, like a `hibachi.TokenStream`.

    ``async for`` it in an event loop, ``for`` it on a plain thread. Leaving
    the loop early, `cancel`, or cancelling the task that iterates cancels the
    request in the replica: its row is freed at the batcher's next step.
    Errors raised in the replica are raised from the iteration; `ReplicaLost`
    when the replica dies before the stream ends.
    """

    __slots__ = ("_done", "_response")

    def __init__(self, response: Any) -> None:
        self._response = response
        self._done = False

    def cancel(self) -> None:
        """Cancel the request in the replica; the stream ends. Idempotent."""
        if not self._done:
            self._done = True
            self._response.cancel()

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            return await self._response.__anext__()
        except asyncio.CancelledError:
            self.cancel()
            raise
        except ray.exceptions.RayActorError as exc:
            self._done = True
            _lost(exc)
        except BaseException:
            self._done = True
            raise

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            return self._response.__next__()
        except ray.exceptions.RayActorError as exc:
            self._done = True
            _lost(exc)
        except BaseException:
            self._done = True
            raise

    def __aiter__(self) -> AsyncIterator[Any]:
        return _Loop(self)

    def __iter__(self) -> Iterator[Any]:
        return _Loop(self)

    async def collect(self) -> list[Any]:
        """All remaining tokens, as a list."""
        return [token async for token in self]

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            _cancel_abandoned(self)


class _Loop:
    """One loop over a stream: dropping it (leaving the loop early) cancels the stream."""

    __slots__ = ("_stream",)

    def __init__(self, stream: RemoteStream) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._stream.__anext__()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self._stream.__next__()

    def __del__(self) -> None:
        _cancel_abandoned(self._stream)


def _lost(exc: ray.exceptions.RayActorError) -> NoReturn:
    """`ReplicaLost` for Ray's error that the replica's actor is gone (dead, or
    unreachable mid-request); an error the replica's own code raised stays as it is."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        raise exc
    raise ReplicaLost(f"the replica serving this request was lost: {exc}") from exc


def _cancel_abandoned(stream: RemoteStream) -> None:
    """Cancel a stream dropped unfinished: best effort, as Ray may be shut down by now
    (and must not be started again by the cancellation)."""
    if ray.is_initialized():
        with contextlib.suppress(Exception):
            stream.cancel()
