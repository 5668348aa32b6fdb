"""One caller's request as the engine sees it, and the checks made on entry."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._backends import Backend
from .._core.settings import check_count
from .._exceptions import HibachiError, InvalidRequest

__all__ = ["Request", "Sink", "check_budget", "check_cast", "check_prompt"]

_ids = itertools.count()


class Sink(Protocol):
    """Where a request's results go (see `hibachi._core.delivery`)."""

    @property
    def lost(self) -> bool: ...

    def put(self, item: Any) -> None: ...

    def end(self, error: BaseException | None = None) -> None: ...

    def abandon(self, error: BaseException) -> None: ...


@dataclass(eq=False, slots=True)
class Request:
    """A prompt waiting for, or being given, tokens.

    ``cancelled`` and ``expired`` may be set from any thread; the engine acts
    on them at its next step. ``stops``: whether the stop token ends it.
    """

    prompt: Any
    max_new_tokens: int
    sink: Sink
    deadline: float | None = None
    options: Any = None
    stops: bool = True
    cancelled: bool = False
    expired: bool = False
    active: bool = False
    ended: bool = False
    sent: int = 0  # tokens put in the sink (engine thread)
    preempted: int = 0  # times its row was preempted and the request queued again
    taken: int = 0  # tokens the caller has read (caller's thread)
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def departed(self) -> bool:
        """The caller no longer wants results."""
        return self.cancelled or self.expired or self.sink.lost

    def finish(self, error: BaseException | None = None) -> None:
        """End the caller's stream, once."""
        if not self.ended:
            self.ended = True
            self.sink.end(error)

    def abandon(self, error: BaseException) -> None:
        """End the caller's stream now, from a thread other than the engine's (which is
        stuck in the model); the engine forgets the request when it gets back."""
        if not self.ended:
            self.ended = True
            self.sink.abandon(error)


def check_prompt(
    backend: Backend, prompt: object, padding: Any, device: Any, max_length: int | None = None
) -> Any:
    """The prompt as a fresh storage array, or InvalidRequest saying what is wrong."""
    if not backend.is_array(prompt):
        raise InvalidRequest(
            f"the prompt must be a {backend.name} array, got {type(prompt).__module__}."
            f"{type(prompt).__qualname__}"
        )
    arr: Any = prompt
    token_shape = tuple(padding.shape)
    if len(arr.shape) != 1 + len(token_shape) or tuple(arr.shape[1:]) != token_shape:
        raise InvalidRequest(
            f"the prompt must have shape (S, *{token_shape}) to match pad_value, "
            f"got {tuple(arr.shape)}"
        )
    if arr.shape[0] < 1:
        raise InvalidRequest("the prompt is empty: it needs at least one token")
    if max_length is not None and arr.shape[0] > max_length:
        raise InvalidRequest(
            f"the prompt has {arr.shape[0]} tokens, more than max_prompt_length={max_length}"
        )
    check_cast(backend, arr.dtype, padding, "the prompt", InvalidRequest)
    if backend.device(arr) != device:
        raise InvalidRequest(
            f"the prompt is on device {backend.device(arr)}, the batcher on {device}"
        )
    return backend.to_storage(arr, padding)


def check_budget(value: object) -> int:
    """A request's ``max_new_tokens``: an int in 1 … 2**63-1, or InvalidRequest."""
    return check_count(value, "max_new_tokens", error=InvalidRequest)


def check_cast(
    backend: Backend, dtype: Any, padding: Any, what: str, error: type[HibachiError]
) -> None:
    """``error`` unless ``dtype`` (``what``'s) casts safely to the tokens' (``padding``'s)."""
    if not backend.can_cast(dtype, padding.dtype):
        raise error(
            f"{what} has dtype {dtype}, which does not cast safely to the tokens' dtype "
            f"{padding.dtype} (the pad_value's)"
        )
