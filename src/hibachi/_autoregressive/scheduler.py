"""The synchronous core of continuous batching.

One step is ``schedule()`` → the model on ``model_inputs()`` → ``complete(output)``
(or ``fail(error)``). Everything here is plain code over plain data: no
threads, no event loop. The engine drives it from its thread; tests drive it
step by step with a fake clock and list sinks.

- ``schedule`` drops rows whose caller left or whose deadline passed, admits
  waiting requests into free rows in arrival order, and says whether a step
  should run.
- ``model_inputs`` fixes the step's rows and asks the model for memory for
  their new tokens; while it has none, the newest row is *preempted*: its
  request goes back to the front of the queue with the tokens it produced
  appended to its prompt, to be recomputed later (its stream only pauses).
- ``complete`` writes each row's new token, streams it to its caller, ends the
  rows that produced the stop token or spent their budget, and trims padding.

Active rows are kept dense in rows 0 … n-1: a row that leaves is replaced by
the last one. What the model is handed, and which rows get a token, is the
layout's business (`hibachi._autoregressive.layout`): the whole left-padded sequences of every
row for a stateless model, or each row's unseen tokens for an incremental one.
"""

from __future__ import annotations

import functools
import heapq
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backends import Backend
from .._backends._host import host_values
from .._core.model import is_fatal, model_error
from .._core.queue import WorkQueue
from .._exceptions import ModelError, QueueFull, Timeout
from .buffer import SequenceBuffer
from .layout import Layout
from .request import Request, check_cast

__all__ = ["Counters", "Scheduler", "Send", "copy_error"]

Send = Callable[[list[tuple[Any, int]], Any], None]
"""How a step's tokens reach their callers: ``send([(sink, i), …], column)`` puts row
``i`` of ``column`` (storage, one token per row of the step) in each ``sink``."""


@dataclass
class Counters:
    """What the scheduler has done so far (read by `stats()`)."""

    submitted: int = 0
    admitted: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    timed_out: int = 0
    steps: int = 0
    tokens: int = 0
    filled_rows: int = 0
    padding_cells: int = 0
    cells: int = 0
    preempted: int = 0
    peak_rows: int = 0


class Scheduler:
    """Which requests run at each step, and what becomes of their tokens."""

    def __init__(
        self,
        backend: Backend,
        *,
        stop_token: Any,
        pad_value: Any,
        max_batch_size: int,
        queue: WorkQueue[Request],
        clock: Callable[[], float] = time.monotonic,
        layout: Layout | None = None,
        max_unread_tokens: int | None = None,
        send: Send | None = None,
    ) -> None:
        """``send``: how a step's tokens reach their sinks (a `Courier`'s ``send``);
        None: this thread puts them in the sinks itself (`send_tokens`)."""
        self.backend = backend
        self.max_unread_tokens = max_unread_tokens
        self.stop_token = stop_token
        self.pad_value = pad_value
        self.max_batch_size = max_batch_size
        self.queue = queue
        self.clock = clock
        self.rows: list[Request] = []
        self.remaining = np.zeros(max_batch_size, dtype=np.int64)
        self.layout: Layout = layout or SequenceBuffer(backend, pad_value, max_batch_size)
        self.counters = Counters()
        self._deadlines: list[tuple[float, int, Request]] = []
        self._deadline_lock = threading.Lock()
        self._departures_pending = False
        self._stop_value = host_values(backend, stop_token)
        self._checked: tuple[type, Any] | None = None  # the output kind last found sound
        self._token_shape = tuple(pad_value.shape)
        self._send: Send = send or functools.partial(_put_tokens, backend)

    # -- called from any thread -------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a checked request (QueueFull / BatcherClosed propagate)."""
        self.queue.put(request)
        with self._deadline_lock:
            self.counters.submitted += 1
            if request.deadline is not None:
                heapq.heappush(self._deadlines, (request.deadline, request.id, request))

    def note_departure(self) -> None:
        """A caller left: look for departed rows at the next step."""
        self._departures_pending = True

    # -- one step -----------------------------------------------------------------

    def schedule(self, admit: int | None = None) -> bool:
        """Drop departed rows, admit waiting requests (at most ``admit``, None: as many
        as there is room for); True if a step should run."""
        now = self.clock()
        self._expire(now)
        if self._departures_pending:
            self._departures_pending = False
            self._drop_departed()
        self._admit(admit)
        if not self.rows and len(self.queue):
            self._check_fault()
        return bool(self.rows)

    def model_inputs(self) -> tuple[Any, ...] | None:
        """The model's arguments for this step: (tokens, mask) for a stateless model.

        Fixes the step's rows and makes sure the model has memory for them
        (`Layout.reserve`), preempting the newest row while it has not. None:
        no row is left to step (the model's memory failed the last ones).
        """
        while self.rows:
            n = len(self.rows)
            inputs = self.layout.inputs(n)
            try:
                if self.layout.reserve(n):
                    return inputs
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                self._end_step_rows(model_error(exc))
                continue
            self.layout.retract()
            if n == 1:
                self._end_step_rows(_NO_MEMORY)
            else:
                self._preempt(self.layout.newest(n))
        return None

    def _end_step_rows(self, error: BaseException) -> None:
        """End the rows of the step `model_inputs` fixed with ``error``."""
        members = self.layout.step_rows(len(self.rows))
        self.counters.failed += len(members)
        self._remove(members, error)

    def _preempt(self, row: int) -> None:
        """Give row ``row``'s memory back and queue its request again, first, to be fed its
        prompt and the tokens it produced so far (its stream sees only a pause)."""
        request = self.rows[row]
        prompt = self.layout.recompute(row)
        budget = int(self.remaining[row])
        self._remove_row(row)
        self.layout.settle(len(self.rows))
        request.prompt, request.max_new_tokens = prompt, budget
        request.active = False
        request.preempted += 1
        self.counters.preempted += 1
        self.queue.push_front(request)

    def complete(self, output: Any) -> None:
        """Apply the model's output for the rows of this step."""
        self.apply(self.check_output(output, self.layout.step_size(len(self.rows))))

    def subset_inputs(self, positions: list[int]) -> tuple[Any, ...]:
        """The model's arguments for this step's rows at ``positions`` only (to retry them)."""
        return self.layout.subset_inputs(len(self.rows), positions)

    def apply(self, column: Any, failures: Mapping[int, BaseException] | None = None) -> None:
        """Apply checked tokens (storage, one per row of the step) for the rows of this step.

        ``failures`` maps positions in the step to the error that ends their
        row: those rows get no token (their entry in ``column`` is ignored).
        """
        n = len(self.rows)
        failed = self._failed_rows(failures, n) if failures else {}
        self._count_step(n)
        host = host_values(self.backend, column)
        rows, column = self.layout.record(column, n, host)
        if rows is not None:  # a subset of the rows got a token (a `SlotLayout`'s step)
            host = None if host is None else host_values(self.backend, column)
        done = self._spend(rows, n, column, host)
        members: Sequence[int] | None = None  # the rows that got a token: None, rows < n
        kept: list[int] | None = None  # their positions in the step, where some failed
        requests = self.rows
        if rows is not None or failed:
            members = range(n) if rows is None else rows.tolist()
            if failed:
                kept = [j for j, i in enumerate(members) if i not in failed]
                members = [members[j] for j in kept]
                done = None if done is None else done[kept]
            requests = [requests[i] for i in members]
        overrun = self._deliver(requests, column, done, kept)
        self.counters.tokens += len(requests) - len(overrun)
        finished = [] if done is None else np.flatnonzero(done).tolist()
        if finished or overrun or failed:
            self._end_finished(range(n) if members is None else members, finished, overrun, failed)

    def _spend(self, rows: Any, n: int, column: Any, host: list[Any] | None) -> Any:
        """Take a token from the budget of each row that got one (``rows``; None: rows < n);
        which of them are done, by the stop token or their budget (None: none is).

        With ``host`` (the tokens as Python values), a step where no row ends
        costs one look for the stop token and one for a spent budget: this
        runs once per step, between two forward passes.
        """
        if rows is None:
            left = self.remaining[:n]
            left -= 1
        else:
            left = self.remaining[rows] - 1
            self.remaining[rows] = left
        if host is not None and left.all() and self._stop_value not in host:
            return None
        members = range(n) if rows is None else rows.tolist()
        return self._stopped(column, host, members) | (left <= 0)

    def _stopped(
        self, column: Any, host: list[Any] | None, members: Sequence[int]
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which rows of ``column`` (``host``: its values, or None; rows ``members``) are the
        stop token, of a request that it ends."""
        if host is None:
            found = self.backend.rows_equal(column, self.stop_token)
        else:
            stop = self._stop_value
            found = np.fromiter((value == stop for value in host), dtype=bool, count=len(host))
        if found.any():
            rows = self.rows
            found &= np.fromiter((rows[i].stops for i in members), dtype=bool, count=len(found))
        return found

    def _end_finished(
        self,
        members: Sequence[int],
        finished: list[int],
        overrun: list[int],
        failed: dict[int, BaseException | None],
    ) -> None:
        """End the rows of the step that finished, overran, or failed (positions in ``members``)."""
        ended: dict[int, BaseException | None] = dict(failed)
        ended.update((members[j], None) for j in finished)
        ended.update((members[j], _OVERRUN) for j in overrun)
        self._end_rows(ended)
        self.counters.completed += len(finished)
        self.counters.failed += len(overrun) + len(failed)

    def _failed_rows(
        self, failures: Mapping[int, BaseException], n: int
    ) -> dict[int, BaseException | None]:
        members = self.layout.step_rows(n)
        return {members[position]: error for position, error in failures.items()}

    def _deliver(
        self,
        requests: list[Request],
        column: Any,
        done: Any,
        positions: Sequence[int] | None = None,
    ) -> list[int]:
        """Send each request its token (``requests[j]``'s is row ``positions[j]`` of ``column``,
        or row ``j``); return those not sent: their caller has ``max_unread_tokens``
        unread already (back-pressure: the request ends unless its token was its
        last: ``done[j]``; ``done`` None: none was)."""
        limit = self.max_unread_tokens
        overrun = []
        sinks = []
        for j, request in enumerate(requests):
            sent = request.sent
            if (
                limit is not None
                and sent - request.taken >= limit
                and (done is None or not done[j])
            ):
                overrun.append(j)
                continue
            sinks.append((request.sink, j if positions is None else positions[j]))
            request.sent = sent + 1
        if sinks:
            self._send(sinks, column)
        return overrun

    def fail(self, error: BaseException) -> None:
        """The model failed this step: every row in it gets a ModelError."""
        n = len(self.rows)
        members = self.layout.step_rows(n)
        self._count_step(n)
        self.counters.failed += len(members)
        self._remove(members, error)

    def abort(self, error: BaseException) -> None:
        """End every active and waiting request with ``error`` (closing at once)."""
        self.counters.failed += len(self.rows)
        self._remove(list(range(len(self.rows))), error)
        for request in self.queue.drain():
            if request.ended:
                continue
            if request.departed:
                self.counters.cancelled += 1
                request.finish()
            else:
                self.counters.failed += 1
                request.finish(copy_error(error))

    # -- internals ----------------------------------------------------------------

    def _check_fault(self) -> None:
        """Refuse all work if the layout can never take a request again."""
        error = self.layout.fault()
        if error is not None:
            self.queue.close()
            self.abort(error)

    def _admit(self, most: int | None) -> None:
        """Admit waiting requests in arrival order while the layout has room (at most ``most``)."""
        while (most is None or most > 0) and self.layout.room(len(self.rows)) > 0:
            taken = self.queue.take(1)
            if not taken:
                return
            request = taken[0]
            if request.departed:
                if not request.ended:
                    self._end_departed(request)
                continue
            if not self._admit_one(request):
                return
            if most is not None:
                most -= 1

    def _admit_one(self, request: Request) -> bool:
        """Give ``request`` a row; False if the model has no memory for it yet (it waits,
        first in the queue, and nothing after it is admitted before it)."""
        row = len(self.rows)
        try:
            entered = self.layout.enter(row, request, row + 1)
        except ModelError as error:
            self.counters.failed += 1
            request.finish(error)
            self.layout.settle(row)
            return True
        if not entered:
            if self.rows:
                self.queue.push_front(request)
                return False
            self.counters.failed += 1
            request.finish(copy_error(_NO_MEMORY))
            return True
        self.rows.append(request)
        self.remaining[row] = request.max_new_tokens
        request.active = True
        request.prompt = None  # the layout holds it now
        if not request.preempted:
            self.counters.admitted += 1
        self.counters.peak_rows = max(self.counters.peak_rows, row + 1)
        return True

    def _drop_departed(self) -> None:
        gone = [i for i, request in enumerate(self.rows) if request.departed]
        if gone:
            for i in sorted(gone, reverse=True):
                request = self.rows[i]
                self._remove_row(i)
                self._end_departed(request)
            self.layout.settle(len(self.rows))

    def _end_departed(self, request: Request) -> None:
        if request.expired and not request.cancelled:
            self.counters.timed_out += 1
            request.finish(Timeout("the request was not finished before its deadline"))
        else:
            self.counters.cancelled += 1
            request.finish()

    def _expire(self, now: float) -> None:
        heap = self._deadlines
        if not heap or heap[0][0] > now:
            if len(heap) > 2 * (len(self.rows) + len(self.queue)) + 64:
                self._prune_deadlines()
            return
        with self._deadline_lock:
            expired = []
            while heap and heap[0][0] <= now:
                expired.append(heapq.heappop(heap)[2])
        for request in expired:
            if request.ended or request.departed:
                continue
            request.expired = True
            if request.active:
                self._departures_pending = True
            else:  # still queued: answer now, skip it at admission
                self._end_departed(request)

    def _prune_deadlines(self) -> None:
        """Forget deadlines of requests that ended, so finished work frees its memory."""
        with self._deadline_lock:
            self._deadlines = [entry for entry in self._deadlines if not entry[2].ended]
            heapq.heapify(self._deadlines)

    def _remove(
        self,
        indices: list[int],
        error: BaseException | None,
        errors: dict[int, BaseException] | None = None,
    ) -> None:
        """End rows ``indices`` with ``error`` (None: normally), or with ``errors[row]``."""
        self._end_rows({i: error if errors is None else errors.get(i, error) for i in indices})

    def _end_rows(self, ended: Mapping[int, BaseException | None]) -> None:
        """Remove rows ``ended`` and end their callers, each with its error (None: done)."""
        for i in sorted(ended, reverse=True):
            request, error = self.rows[i], ended[i]
            self._remove_row(i)  # first, so the row's slot is released before its caller hears
            request.finish(copy_error(error) if error is not None else None)
        self.layout.settle(len(self.rows))

    def _remove_row(self, i: int) -> None:
        n = len(self.rows)
        self.layout.leave(i, n)
        last = n - 1
        if i != last:
            self.rows[i] = self.rows[last]
            self.remaining[i] = self.remaining[last]
        self.rows.pop()

    def _count_step(self, n: int) -> None:
        c = self.counters
        c.steps += 1
        c.filled_rows += self.layout.step_size(n)
        cells, padding = self.layout.step_cells(n)
        c.cells += cells
        c.padding_cells += padding

    def check_output(self, output: Any, n: int) -> Any:
        """The model's ``output`` for ``n`` rows as storage tokens, or ModelError."""
        checked, kind = self._checked, type(output)
        if checked is None or kind is not checked[0] or output.dtype != checked[1]:
            self._check_kind(output)
        shape = tuple(output.shape)
        if shape[:1] != (n,) or shape[1:] != self._token_shape:
            raise ModelError(
                f"the model returned shape {shape} for a batch of {n}, "
                f"expected {(n, *self._token_shape)}: one new token per row"
            )
        try:
            return self.backend.to_storage(output, self.pad_value)
        except Exception as exc:
            raise ModelError(
                f"the model's output could not be stored: {type(exc).__name__}: {exc}"
            ) from exc

    def _check_kind(self, output: Any) -> None:
        """ModelError unless ``output`` is an array whose dtype casts to the tokens'; the
        kind (type, dtype) found sound is kept, so later steps check only the shape."""
        backend = self.backend
        if not backend.is_array(output):
            raise ModelError(
                f"the model returned {type(output).__qualname__}, expected a {backend.name} array"
            )
        check_cast(backend, output.dtype, self.pad_value, "the model's output", ModelError)
        self._checked = (type(output), output.dtype)


def _put_tokens(backend: Backend, sinks: list[tuple[Any, int]], column: Any) -> None:
    """The `Send` of a scheduler that delivers on its own thread."""
    tokens = backend.unbind(backend.to_user(column))
    for sink, i in sinks:
        sink.put(tokens[i])


_NO_MEMORY = ModelError(
    "the model has no memory for this request even with no other request running "
    "(its admit() or reserve() refused it alone)"
)

_OVERRUN = QueueFull(
    "the stream was not read: it held max_unread_tokens unread tokens, so it was ended"
)


def copy_error(error: BaseException) -> BaseException:
    """A fresh instance per caller, so tracebacks of concurrent raises don't mix."""
    try:
        copy = type(error)(*error.args)
    except Exception:
        return error
    copy.__cause__ = error.__cause__
    return copy
