"""Shared fixtures. Helper models: ``_models.py``; the scheduler driver: ``_harness.py``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import hibachi

ENGINE_THREAD = "hibachi-ar"


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., hibachi.AutoregressiveBatcher]]:
    """Build batchers that are closed (at once) when the test ends, whatever happened."""
    made: list[hibachi.AutoregressiveBatcher] = []

    def make(model: Any, **options: Any) -> hibachi.AutoregressiveBatcher:
        batcher = hibachi.AutoregressiveBatcher(model, **options)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(cancel=True)


@pytest.fixture
def no_leaked_engines() -> Iterator[None]:
    """Fail a test that leaves an engine thread of its own running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.name == ENGINE_THREAD]
    for thread in leaked:
        thread.join(timeout=5)
    assert not [t for t in leaked if t.is_alive()], "a batcher was left open"
