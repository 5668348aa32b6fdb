"""The soak with faults (``benchmarks/soak.py``), scaled down: no innocent request fails,
no token crosses to another request, nothing hangs, for every batcher."""

from __future__ import annotations

from typing import Any

import pytest

from support.soak import KINDS, Settings, Spec, classify, soak
from support.soak_models import TransientFault

pytestmark = pytest.mark.slow

SMALL = Settings(requests=1500, loops=2, tasks=24, threads=6, transient_every=40, bound=60.0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_small_soak_fails_no_innocent_request(kind: str) -> None:
    tally = soak(kind, SMALL)
    assert tally.requests == SMALL.requests and tally.hangs == 0
    assert tally["innocent"] == 0 and tally["crosstalk"] == 0, tally.outcomes
    assert tally["bad_accepted"] == 0 and tally["bad_failed"] > 0
    assert tally.transient_faults > 0 and tally["cancelled"] > 0 and tally["ok"] > 0


def test_the_soak_sees_an_innocent_failure(monkeypatch: Any) -> None:
    """With the autoregressive isolation switched off, good neighbours of bad requests fail."""
    from hibachi._autoregressive import engine

    def fail_everyone(scheduler: Any, call: Any, size: int, failed: Any) -> None:
        backend, pad = scheduler.backend, scheduler.pad_value
        column = backend.full((size, *pad.shape), pad)
        scheduler.apply(column, dict.fromkeys(range(size), failed.error))

    monkeypatch.setattr(engine, "isolate", fail_everyone)
    tally = soak(
        "stateless", Settings(requests=600, loops=1, tasks=24, threads=2, transient_every=0)
    )
    assert tally["innocent"] > 0


SPEC = Spec(tag=5, length=2, budget=3, bad=False, cancel_after=None, timeout=None, delay=0.0)


@pytest.mark.parametrize(
    ("spec", "got", "error", "outcome"),
    [
        pytest.param(SPEC, [1, 2], None, "ok", id="ok"),
        pytest.param(SPEC, [1, 3], None, "crosstalk", id="crosstalk"),
        pytest.param(SPEC, [1], None, "crosstalk", id="short"),
        pytest.param(SPEC, [1], "model", "innocent", id="innocent"),
        pytest.param(SPEC, [], "transient", "transient", id="transient"),
        pytest.param(SPEC, [], "timeout", "innocent", id="timeout-without-deadline"),
    ],
)
def test_outcomes_are_classified(spec: Spec, got: list[int], error: Any, outcome: str) -> None:
    from hibachi import ModelError, Timeout

    made: BaseException | None = None
    if error == "model":
        made = ModelError("x")
        made.__cause__ = ValueError()
    elif error == "transient":
        made = ModelError("x")
        made.__cause__ = TransientFault()
    elif error == "timeout":
        made = Timeout("x")
    assert classify(spec, got, [1, 2], made) == outcome
