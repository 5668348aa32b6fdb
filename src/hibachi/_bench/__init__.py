"""What `hibachi bench` measures: five workloads, each in its own module.

``run_bench(settings, progress)`` runs the workloads ``settings`` names and
returns a `Report`; `report` turns it into a table, a JSON file and a plot.
Nothing here is imported by ``import hibachi``: torch, transformers, rich and
matplotlib load only when a bench runs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime

from .progress import NullProgress, Progress
from .results import Report, Section
from .settings import WORKLOADS, BenchSettings, preset

__all__ = [
    "WORKLOADS",
    "BenchSettings",
    "NullProgress",
    "Progress",
    "Report",
    "preset",
    "run_bench",
]

Measure = Callable[[BenchSettings, Progress], Section]


def _measures() -> dict[str, Measure]:
    from . import embeddings, generation, overhead, pipeline, scaling

    return {
        "generation": generation.measure,
        "embeddings": embeddings.measure,
        "overhead": overhead.measure,
        "scaling": scaling.measure,
        "pipeline": pipeline.measure,
    }


def run_bench(settings: BenchSettings, progress: Progress | None = None) -> Report:
    """Run the workloads of ``settings`` in order; a workload that fails is reported, not raised."""
    from hibachi import __version__

    from .environment import (
        busy_cpus,
        describe_machine,
        free_cpus,
        quiet_libraries,
        torch_threads,
    )

    progress = progress or NullProgress()
    quiet_libraries()
    measures = _measures()
    report = Report(
        version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=describe_machine(settings.device),
        settings=settings.as_json(),
    )
    start = time.perf_counter()
    for name in settings.workloads:
        # Chosen again before each workload: other processes come and go.
        threads = settings.threads or free_cpus(busy_cpus())
        with torch_threads(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # third-party deprecation chatter is not a result
            section = _run_one(name, measures[name], settings, progress)
        section.settings["torch_threads"] = threads
        report.sections.append(section)
    report.seconds = time.perf_counter() - start
    return report


def _run_one(name: str, measure: Measure, settings: BenchSettings, progress: Progress) -> Section:
    start = time.perf_counter()
    try:
        section = measure(settings, progress)
    except Exception as exc:
        section = Section(name, name.capitalize(), [])
        section.fail(name, exc)
    section.seconds = time.perf_counter() - start
    return section
