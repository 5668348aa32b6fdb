"""`EngineThread`: the one thread that serves a batcher, and its lifecycle.

Callers reach it through a `WorkQueue`; closing that queue is how it is told
to stop. A subclass supplies the work (`_loop`), what to do with the requests
it holds if the thread itself fails (`_crash`), and how to push out the last
results (`_flush`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from .._exceptions import BatcherClosed
from .health import Health
from .queue import WorkQueue

__all__ = ["EngineThread", "Runner"]

_log = logging.getLogger("hibachi")

_CANCEL_GRACE = 0.1  # seconds close(cancel=True) lets a model call run before ending its callers
_WAIT_WARNING = 10.0  # seconds between the warnings of a close that waits on a model call


class Runner(Protocol):
    """What the engine thread needs of what calls the model: a `ModelRunner`, or a
    pipeline's `Stages`."""

    @property
    def busy_since(self) -> float | None:
        """``time.monotonic()`` when the model call now running began; None: none runs."""
        ...

    def close(self) -> None: ...


class EngineThread:
    """Owns a daemon thread that runs `_loop` until the queue is closed and empty."""

    def __init__(self, queue: WorkQueue[Any], runner: Runner, name: str) -> None:
        self.queue = queue
        self.runner = runner
        self._abort = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.stopped = threading.Event()
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, cancel: bool) -> None:
        """Refuse new work; finish (or, with ``cancel``, end) what is left, then exit."""
        if cancel:
            self._abort = True
        self.queue.close()
        self.queue.wake()

    def join(self, timeout: float | None = None) -> bool:
        return self.stopped.wait(timeout)

    def finish(self, *, cancel: bool, wait: bool = True) -> None:
        """After `stop`: wait for the thread (and the threads it owns) to end.

        With ``cancel``, a model call still running after a moment has its
        callers ended at once with `BatcherClosed` from this thread; then,
        with ``wait``, the call is waited for (a warning every
        ``_WAIT_WARNING`` seconds says how long it has run), and without,
        a warning says the engine thread is still inside the model (so does
        `health`) and `finish` returns: the thread ends by itself once the call
        returns. Without ``cancel``, ``wait`` False returns at once: the
        requests left run to their end on the thread.
        """
        if cancel:
            self._end_callers()
        elif not wait:
            return
        if wait:
            self._join()
        elif not self.stopped.is_set():
            _log.warning(
                "%s is still inside the model (for %.1f s); its callers were ended "
                "with BatcherClosed; the thread ends when the model returns",
                self._thread.name,
                self._in_model_for(),
            )

    def _end_callers(self) -> None:
        """Give a model call ``_CANCEL_GRACE``; if it still runs, end its callers now."""
        while not self.stopped.wait(_CANCEL_GRACE):
            if self.runner.busy_since is not None:
                self._abandon(BatcherClosed("the batcher was closed before the request finished"))
                return

    def _join(self) -> None:
        """Wait until the thread has ended, saying so while a model call holds it up."""
        while not self.stopped.wait(_WAIT_WARNING):
            _log.warning(
                "closing %s waits for a model call that has run for %.1f s",
                self._thread.name,
                self._in_model_for(),
            )
        if self._thread.ident is not None:
            self._thread.join()

    def _in_model_for(self) -> float:
        since = self.runner.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def health(self, state: str) -> Health:
        """The engine's side of `Health`, for a batcher in lifecycle ``state``."""
        since = self.runner.busy_since
        failure = self.failure
        return Health(
            state=state,
            engine_alive=self._thread.is_alive(),
            in_model_for=None if since is None else max(0.0, time.monotonic() - since),
            failure=None if failure is None else f"{type(failure).__name__}: {failure}",
            queue_depth=len(self.queue),
        )

    def on_own_thread(self) -> bool:
        """Whether the caller runs on the engine thread (inside the model, say)."""
        return threading.current_thread() is self._thread

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # whatever ends the loop, every caller is told
            self._fail(exc)
        finally:
            self._finish()

    def _fail(self, exc: BaseException) -> None:
        """The loop ended with ``exc``: refuse new work and end every request held.

        Nothing is re-raised: in a thread a re-raised exception only reaches
        `threading.excepthook`, while the callers are what must learn of it.
        """
        self.failure = exc
        self.queue.close()
        try:
            self._crash(exc)
        except BaseException as second:
            _log.critical("%s could not end its requests", self._thread.name, exc_info=second)
        _log.error("%s failed; its requests were ended", self._thread.name, exc_info=exc)

    def _finish(self) -> None:
        """Deliver what is pending, release the model's loop; set `stopped` whatever happens."""
        try:
            self._flush()
            self.runner.close()
        except BaseException as exc:
            _log.error("%s failed while stopping", self._thread.name, exc_info=exc)
        finally:
            self.stopped.set()

    def _loop(self) -> None:
        raise NotImplementedError

    def _crash(self, exc: BaseException) -> None:
        """End every request held with an error: the thread failed with ``exc``."""
        raise NotImplementedError

    def _flush(self) -> None:
        """Deliver whatever results are still pending."""
        raise NotImplementedError

    def _abandon(self, error: BaseException) -> None:
        """End every caller with ``error`` from another thread: this one is stuck in the model.

        Only sets flags and hands errors to callers: the thread's own structures
        are left for it to clean up when the model returns.
        """
        raise NotImplementedError
