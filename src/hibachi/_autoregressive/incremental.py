"""`IncrementalModel`: the contract of a model that keeps per-sequence state."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._core.pipeline import Pipeline
from .stats import MemoryStats

__all__ = ["Accepted", "IncrementalModel", "overrides"]


@dataclass(frozen=True)
class Accepted:
    """What `IncrementalModel.check_request` may return in place of a bare budget.

    ``max_new_tokens``: the request's budget, as the bare int would be.
    ``options``: what `step` gets as this request's options in place of those
    given to ``run`` (the model's own parsed form of them, say).
    ``ends_at_stop_token``: False makes the stop token an ordinary token for
    this request, which then ends by its budget (or any other way but that).
    """

    max_new_tokens: int
    options: Any
    ends_at_stop_token: bool = True


class IncrementalModel(abc.ABC):
    """A model that remembers what each sequence has seen, in numbered slots.

    Give one to `AutoregressiveBatcher` in place of a ``model(tokens, mask)``
    callable and the batcher runs it incrementally: at each step the model gets,
    for each row of the step, only the tokens that row's slot has not seen yet —
    the prompt (in chunks of at most ``max_batch_tokens`` cells per step) when the
    row is new, then the token it produced last. The slot is the row's for its
    whole life; when the row ends, for whatever reason (stop token, budget,
    cancellation, deadline, model error, close), `release` is called before the
    slot is handed to another request.

    Every method but `check_request` and `memory_stats` is called from the
    batcher's engine thread, one call at a time; `step` and `release` may be
    ``async``.

    **Memory.** A model whose memory is bounded (a paged key/value cache)
    overrides `admit` and `reserve`: the batcher then admits a request only
    when the model has room for its prompt, and when a step's rows need
    memory the model does not have, it *preempts* its newest row — releases
    its slot and queues the request again, first, with the tokens it has
    produced appended to its prompt, to be recomputed when memory allows
    (the caller's stream pauses; it sees no token twice and none missing).
    `admit` may also say that the model already holds the first tokens of a
    prompt (a cached prefix): the batcher then feeds only the rest.

    **A step that raises changes nothing.** When `step` raises, the batcher
    retries it on parts of its rows (halves, then single rows) to find the
    rows that fail on their own: only those end, with `ModelError`; the others
    get the token of the retry they succeed in. So a step that raises must
    leave every row's state as it was before the call: commit per-row state
    (lengths, cache entries that later steps read, sampler draws) only once the
    step returns, or undo it before raising. A step that *returns* is taken as
    committed, even if its output is unusable (wrong shape or dtype): its rows
    then fail and are not retried.
    """

    @abc.abstractmethod
    def step(
        self,
        tokens: Any,
        mask: Any,
        slots: np.ndarray[Any, np.dtype[np.int64]],
        options: list[Any],
    ) -> Any:
        """Feed each row its unseen tokens; return each row's next token.

        Args:
            tokens: (B, W, *token_shape), each row's unseen tokens, left-padded
                with ``pad_value`` (the batcher's backend and device).
            mask: (B, W) bool, True on real tokens. Every row has at least one.
            slots: (B,) int64, each row's slot, in 0 … max_batch_size-1; no
                two rows of a step share one.
            options: each row's ``options`` object, as given to ``run``.

        Returns:
            (B, *token_shape): the token that follows each row's tokens. For a
            row whose prompt is not all in yet, it is ignored (return anything
            of the right shape).

        The arrays are hibachi's: read them during the call, don't keep them.
        """

    @abc.abstractmethod
    def release(self, slot: int) -> None:
        """Forget what ``slot`` has seen: its row has ended.

        A slot whose release raises is never used again.
        """

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> int | Accepted:
        """Vet a request in ``run()``, on the caller's thread; return its budget.

        Raise `hibachi.InvalidRequest` to refuse the request (a prompt too long
        for the slots, bad options…). The request gets the returned number of
        new tokens at most, which must lie in 1 … ``max_new_tokens``; or return
        an `Accepted` with that number, the options `step` gets for the request
        and whether the stop token ends it. The default accepts everything.
        """
        return max_new_tokens

    def admit(self, slot: int, prompt: Any, options: Any, generated: int) -> int | None:
        """A request is about to take ``slot``: is there memory for its prompt?

        Called before the slot's first step. ``prompt`` (S, *token_shape) is
        the request's prompt; ``generated`` how many of its last tokens the
        request produced itself before it was preempted (0 for a new
        request: a model that samples continues such a row's draws where
        they were).

        Returns how many of the prompt's first tokens the model already
        holds for ``slot`` (a cached prefix: the batcher feeds only the
        rest), at most S - 1: the last token is always fed, for the next
        token's sake. None: no memory for the prompt now; the request waits
        at the front of the queue and is offered again at a later step
        (None while no other row holds memory fails the request). The
        default admits every request and holds nothing.

        Once a request is admitted, ``release(slot)`` ends it as any other.
        A model that overrides `admit` is offered requests one at a time,
        while fewer than ``max_batch_tokens`` prompt tokens wait to be fed:
        a prefix it has just computed is then found by the requests behind.
        """
        return 0

    def reserve(self, slots: np.ndarray[Any, np.dtype[np.int64]], counts: Any) -> bool:
        """Make room for ``counts[i]`` more tokens in ``slots[i]``, before a step feeds them.

        ``counts`` is an int64 array of the step's new tokens per row (its
        prompt chunk, or 1). True: there is room (a step never runs without
        it). False: there is not, and nothing was reserved; the batcher then
        preempts its newest row (see the class docstring) and asks again,
        for the step over the rows that remain. The default has room for
        everything. A model that overrides `reserve` may be preempted, so
        the batcher keeps each row's tokens while it runs.

        Room reserved for a step that then raises stays with its slots
        (their retry needs it) until they are released.
        """
        return True

    def memory_stats(self) -> MemoryStats | None:
        """What the model's memory holds now, for the batcher's `stats()`; None (the
        default): nothing to report. Called from any thread: read, don't lock."""
        return None

    def pipeline(self) -> Pipeline | None:
        """The step split into stages that run at once on different rows, or None.

        None (the default): the batcher calls `step`. A `Pipeline` instead
        (see `hibachi.Pipeline`): its first stage gets `step`'s arguments
        ``(tokens, mask, slots, options)``, each next stage what the previous
        returned, and the last returns what `step` would; composed, the stages
        must equal `step`. Each stage keeps the per-slot state of its own
        layers, on its own thread.

        The batcher splits ``max_batch_size`` slots into ``groups`` contiguous
        ranges, the first groups one slot larger where it does not divide
        evenly: group ``g`` owns the ``g``-th range, and a step's rows all
        come from one group. While group A's step is in the stages, other
        groups' steps are too, and the batcher calls `release` (on its engine
        thread) for group B's slots: each call must touch only its own
        slots' state. A slot is never released while a step of its group is
        in the stages.

        A step that raises in any stage changes nothing, as for `step`: the
        stages before the last may write state that a retry of the same step
        overwrites, but only the last stage commits the rows' state (of every
        stage: lengths, sampler draws), when it returns.
        """
        return None


def overrides(model: IncrementalModel, name: str) -> bool:
    """Whether ``model``'s class defines its own ``name`` (not the contract's default)."""
    return getattr(type(model), name, None) is not getattr(IncrementalModel, name)
