"""Models the autoregressive tests run, and the threading handshakes they use.

Every model here keeps its rows independent and honours the mask, so a row's
tokens depend only on that row's real tokens: what batch invariance needs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

import hibachi

T = TypeVar("T")

STOP_TAG = -1
POISON = -999
TIMEOUT = 10.0


def to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """A host NumPy copy of an array of any of the libraries under test."""
    if type(x).__module__.startswith("torch"):
        return np.array(x.detach().cpu().numpy())
    return np.array(x)


def like(template: Any, values: np.ndarray[Any, Any]) -> Any:
    """``values`` as an array of ``template``'s library (NumPy, torch or JAX)."""
    module = type(template).__module__
    if module.startswith("torch"):
        import torch

        return torch.from_numpy(values).to(template.device)
    if module.startswith("jax"):
        import jax.numpy as jnp

        return jnp.asarray(values)
    return values


# -- tagging: each token is [tag, position]; outputs encode who and where --------------


def tagged_prompt(tag: int, length: int) -> np.ndarray[Any, Any]:
    """The prompt [[tag, 0], [tag, 1], ...] of ``length`` tokens."""
    return np.array([[tag, i] for i in range(length)], dtype=np.int64)


def stops_at(tag: int, position: int) -> bool:
    """Whether the tagging model emits the stop token at ``position`` for ``tag``."""
    return tag % 5 == 0 and position >= 3 + tag % 7


def tagged_expected(tag: int, length: int, budget: int) -> list[list[int]]:
    """What the tagging model generates for ``tagged_prompt(tag, length)`` alone."""
    out: list[list[int]] = []
    for position in range(length, length + budget):
        if stops_at(tag, position):
            out.append([STOP_TAG, STOP_TAG])
            break
        out.append([tag, position])
    return out


def tagging_model(tokens: Any, mask: Any) -> Any:
    """Next token [tag, n] for a row whose n real tokens are [tag, 0] … [tag, n-1].

    The tag is read from the row's first real token. A row whose history is
    not exactly that (a token of another row, a lost or shifted token, padding
    that is not the padding token) gets [tag, POISON] instead, so any
    cross-talk or corruption in hibachi's buffers shows up in that row's
    stream. Stops for some tags (see `stops_at`).
    """
    t, m = to_numpy(tokens), to_numpy(mask).astype(bool)
    rows = np.arange(t.shape[0])
    first = m.argmax(axis=1)
    tags = t[rows, first, 0]
    positions = np.cumsum(m, axis=1) - 1
    real_ok = (t[..., 0] == tags[:, None]) & (t[..., 1] == positions)
    pad_ok = (t[..., 0] == 0) & (t[..., 1] == 0)
    intact = np.where(m, real_ok, pad_ok).all(axis=1)
    count = m.sum(axis=1)
    out = np.stack([tags, np.where(intact, count, POISON)], axis=1).astype(np.int64)
    stop = np.array([stops_at(int(tag), int(n)) for tag, n in zip(tags, count, strict=True)])
    stop &= intact
    if stop.any():
        out[stop] = STOP_TAG
    return like(tokens, out)


def tags_of(tokens: Any, mask: Any) -> list[int]:
    """The tag of each row of a tagging model's input."""
    t, m = to_numpy(tokens), to_numpy(mask).astype(bool)
    return [int(t[i, int(m[i].argmax()), 0]) for i in range(t.shape[0])]


# -- hashing: a mask-honouring function of a row's real tokens --------------------------


def hash_tokens(tokens: Any, mask: Any, vocab: int) -> np.ndarray[Any, Any]:
    """For each row, a hash of its real tokens (order-sensitive) mod ``vocab``."""
    t = to_numpy(tokens).astype(np.int64)
    m = to_numpy(mask).astype(bool)
    flat = t.reshape(t.shape[0], t.shape[1], -1)
    weights = np.arange(1, flat.shape[2] + 1)
    values = ((flat + 3) * weights).sum(axis=2)
    positions = np.cumsum(m, axis=1)
    h = np.where(m, values * (positions * 31 + 17), 0).sum(axis=1) + 7 * m.sum(axis=1)
    result: np.ndarray[Any, Any] = h % vocab
    return result


def hash_model(vocab: int) -> Callable[[Any, Any], Any]:
    """Next token: every element equal to the hash of the row's real tokens."""

    def model(tokens: Any, mask: Any) -> Any:
        h = hash_tokens(tokens, mask, vocab)
        token_shape = tuple(tokens.shape[2:])
        out = np.broadcast_to(h.reshape((-1,) + (1,) * len(token_shape)), (len(h), *token_shape))
        return like(tokens, np.ascontiguousarray(out).astype(np.int64))

    return model


# -- handshakes between a model on the engine thread and a test -------------------------


class Gate:
    """Wraps a model so each call waits for the test's permission.

    Each call records what it was given (``record(tokens, mask)``, tags by
    default) on ``arrivals`` and then blocks until `release` or `open`.
    """

    def __init__(
        self,
        model: Callable[[Any, Any], Any] = tagging_model,
        record: Callable[[Any, Any], Any] = tags_of,
    ) -> None:
        self.model = model
        self.record = record
        self.arrivals: queue.Queue[Any] = queue.Queue()
        self.seen: list[Any] = []
        self._permits = threading.Semaphore(0)
        self._open = threading.Event()

    def __call__(self, tokens: Any, mask: Any) -> Any:
        batch = self.record(tokens, mask)
        self.seen.append(batch)
        self.arrivals.put(batch)
        if not self._open.is_set() and not self._permits.acquire(timeout=TIMEOUT):
            raise RuntimeError("the test never released this step")
        return self.model(tokens, mask)

    def next_batch(self) -> Any:
        """What the next model call was given (waits for it)."""
        return self.arrivals.get(timeout=TIMEOUT)

    async def arrival(self) -> Any:
        """`next_batch` without blocking the event loop."""
        return await asyncio.to_thread(self.next_batch)

    def release(self, steps: int = 1) -> None:
        for _ in range(steps):
            self._permits.release()

    def open(self) -> None:
        """Let every call, present and future, through."""
        self._open.set()
        self._permits.release(64)


class Recorder:
    """Wraps a model and records the tags of every batch it is given."""

    def __init__(self, model: Callable[[Any, Any], Any] = tagging_model) -> None:
        self.model = model
        self.batches: list[list[int]] = []

    def __call__(self, tokens: Any, mask: Any) -> Any:
        self.batches.append(tags_of(tokens, mask))
        return self.model(tokens, mask)

    def tags_seen(self) -> set[int]:
        return {tag for batch in self.batches for tag in batch}


def as_lists(tokens: Sequence[Any]) -> list[Any]:
    """Tokens of any library as nested Python lists, for comparison."""
    return [to_numpy(token).tolist() for token in tokens]


def run_async(main: Coroutine[Any, Any, T], timeout: float = 2 * TIMEOUT) -> T:
    """Run ``main`` in a fresh event loop; fail instead of hanging."""
    return asyncio.run(asyncio.wait_for(main, timeout))


# -- batchers over the tagging model -------------------------------------------------------

Make = Callable[..., "hibachi.AutoregressiveBatcher"]
STOP = np.array([-1, -1], dtype=np.int64)
PAD = np.zeros(2, dtype=np.int64)


def tagging(
    make: Make, model: Any = tagging_model, **options: Any
) -> hibachi.AutoregressiveBatcher:
    """A batcher over 2-vector tagged tokens, made by ``make`` (a fixture's factory)."""
    return make(model, stop_token=STOP, pad_value=PAD, **options)


def next_int(tokens: Any, mask: Any) -> Any:
    """A model whose next token is the last one plus one."""
    return tokens[:, -1] + 1
