"""One caller's request as the engine sees it, and the checks made on entry."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._backends import Backend
from .._core.values import as_int, describe_int
from .._exceptions import InvalidRequest

__all__ = ["MAX_COUNT", "Request", "Sink", "check_budget", "check_prompt"]

MAX_COUNT = 2**63 - 1
"""The largest count the engine's int64 bookkeeping holds (budgets, prompt lengths, chunks)."""

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
            f"the prompt must have shape (S, *{token_shape}) to match the padding token, "
            f"got {tuple(arr.shape)}"
        )
    if arr.shape[0] < 1:
        raise InvalidRequest("the prompt is empty: it needs at least one token")
    if max_length is not None and arr.shape[0] > max_length:
        raise InvalidRequest(
            f"the prompt has {arr.shape[0]} tokens, more than max_prompt_length={max_length}"
        )
    if not backend.can_cast(arr.dtype, padding.dtype):
        raise InvalidRequest(
            f"the prompt's dtype {arr.dtype} cannot be cast safely to the padding "
            f"token's dtype {padding.dtype}"
        )
    if backend.device(arr) != device:
        raise InvalidRequest(
            f"the prompt is on device {backend.device(arr)}, the batcher on {device}"
        )
    return backend.to_storage(arr, padding)


def check_budget(
    value: object, name: str = "max_new_tokens", *, most: int | None = MAX_COUNT
) -> int:
    """An int in 1 … ``most`` (None: no upper limit), or InvalidRequest."""
    count = as_int(value)  # a NumPy or other integer becomes a plain int; bools do not
    if count is None:
        raise InvalidRequest(f"{name} must be an int, got {type(value).__name__}")
    if count < 1:
        raise InvalidRequest(f"{name} must be at least 1, got {describe_int(count)}")
    if most is not None and count > most:
        raise InvalidRequest(f"{name} must be at most {most}, got {describe_int(count)}")
    return count
