"""The workloads of `hibachi bench`, one module each: what is compared, and its table.

Each module's ``measure(settings, progress)`` returns a `Section`. The ways
of serving that the workloads compare live in `methods`, the models they
serve in `models`. A workload is imported only when it runs: each pulls in
torch, transformers or sentence-transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..output.progress import Progress
from ..results import Section
from ..settings import WORKLOADS, BenchSettings

__all__ = ["Measure", "measure_of"]

Measure = Callable[[BenchSettings, Progress], Section]


def measure_of(workload: str) -> Measure:
    """The ``measure`` function of ``workload`` (one of `WORKLOADS`), its module imported."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")
    module = importlib.import_module(f"{__name__}.{workload}")
    measure: Measure = module.measure
    return measure
