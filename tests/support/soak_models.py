"""The models the soak drives: each raises on a marked input, now and then on a good
batch (a transient fault), and answers so that any cross-talk shows.

Every token (or feedforward result) names the request it belongs to (its
*tag*) and where it is in the sequence; a model that sees a row whose history
is not exactly its own answers `CORRUPT` for it, so a caller comparing its
tokens with `expected` catches a token of another row, a lost or doubled one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from hibachi import IncrementalModel

__all__ = [
    "BAD",
    "CORRUPT",
    "SHIFT",
    "STOP",
    "Faults",
    "HistoryModel",
    "TransientFault",
    "expected",
    "feedforward_expected",
    "feedforward_input",
    "feedforward_model",
    "prompt",
    "stateless_model",
]

SHIFT = 4096  # a token is tag * SHIFT + position
BAD = SHIFT - 1  # a prompt token at this position marks a bad request
CORRUPT = SHIFT - 2  # the position the model answers for a row that is not intact
STOP = -1
PAD = 0


class TransientFault(ConnectionError):
    """What the models raise, now and then, on a good batch."""


class BadInput(ValueError):
    """What the models raise on a marked input."""


class Faults:
    """Raises `TransientFault` on about one call in ``every`` (seeded; the engine's thread only)."""

    def __init__(self, every: int, seed: int) -> None:
        self.every = every
        self._random = random.Random(seed)
        self.raised = 0

    def maybe(self) -> None:
        if self.every and self._random.randrange(self.every) == 0:
            self.raised += 1
            raise TransientFault("a transient fault on a good batch")


def stops_at(tag: int, position: int) -> bool:
    return tag % 5 == 0 and position >= 3 + tag % 7


def prompt(tag: int, length: int, bad: bool) -> np.ndarray[Any, Any]:
    tokens = tag * SHIFT + np.arange(length, dtype=np.int64)
    if bad:
        tokens[length // 2] = tag * SHIFT + BAD
    return tokens


def expected(tag: int, length: int, budget: int) -> list[int]:
    """The tokens a good request gets alone."""
    out = []
    for position in range(length, length + budget):
        if stops_at(tag, position):
            out.append(STOP)
            break
        out.append(tag * SHIFT + position)
    return out


def _next_tokens(tags: Any, counts: Any, intact: Any) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = tags * SHIFT + np.where(intact, counts, CORRUPT)
    stop = np.array([stops_at(int(t), int(n)) for t, n in zip(tags, counts, strict=True)])
    if stop.size:
        out[stop & intact] = STOP
    return out.astype(np.int64)


def stateless_model(faults: Faults) -> Any:
    """``model(tokens, mask)`` over whole left-padded sequences of scalar tokens."""

    def model(tokens: Any, mask: Any) -> Any:
        t, m = np.asarray(tokens), np.asarray(mask, dtype=bool)
        if ((t % SHIFT == BAD) & m).any():
            raise BadInput("a marked token")
        faults.maybe()
        first = m.argmax(axis=1)
        tags = t[np.arange(t.shape[0]), first] // SHIFT
        positions = np.cumsum(m, axis=1) - 1
        good = (t // SHIFT == tags[:, None]) & (t % SHIFT == positions)
        intact = np.where(m, good, t == PAD).all(axis=1)
        return _next_tokens(tags, m.sum(axis=1), intact)

    return model


class HistoryModel(IncrementalModel):
    """Per-slot tag and length; a step that raises commits nothing."""

    def __init__(self, slots: int, faults: Faults) -> None:
        self.faults = faults
        self.tags = np.zeros(slots, dtype=np.int64)
        self.counts = np.zeros(slots, dtype=np.int64)

    def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
        t, m = np.asarray(tokens), np.asarray(mask, dtype=bool)
        if ((t % SHIFT == BAD) & m).any():
            raise BadInput("a marked token")
        self.faults.maybe()
        first = m.argmax(axis=1)
        seen = self.counts[slots]
        tags = np.where(seen == 0, t[np.arange(t.shape[0]), first] // SHIFT, self.tags[slots])
        positions = seen[:, None] + np.cumsum(m, axis=1) - 1
        good = (t // SHIFT == tags[:, None]) & (t % SHIFT == positions)
        intact = np.where(m, good, True).all(axis=1)
        counts = seen + m.sum(axis=1)
        self.tags[slots], self.counts[slots] = tags, counts  # committed: nothing raises after
        return _next_tokens(tags, counts, intact)

    def release(self, slot: int) -> None:
        self.tags[slot] = self.counts[slot] = 0


def feedforward_input(tag: int, bad: bool) -> np.ndarray[Any, Any]:
    return np.array([tag, 1.0 if bad else 0.0, tag % 97], dtype=np.float64)


def feedforward_expected(tag: int) -> float:
    return float(tag * 3 + tag % 97)


def feedforward_model(faults: Faults) -> Any:
    def model(x: Any) -> Any:
        if (x[:, 1] == 1.0).any():
            raise BadInput("a marked input")
        faults.maybe()
        return x[:, 0] * 3 + x[:, 2]

    return model
