"""What `hibachi bench` measures, and how it reports it.

``run_bench(settings, progress)`` runs the workloads ``settings`` names and
returns a `Report`; `output` turns it into a table, a JSON file, a plot and a
results document. The folders:

- `workloads`: one module per workload (what is compared, and its table);
- `methods`: the ways of serving that the workloads compare;
- `models`: the models they serve and their requests;
- `timing`: best-of runs, alternating rounds, hibachi's steps timed;
- `output`: table, JSON, plot, Markdown, progress;
- `environment`: the machine, the CPUs the bench may use, quiet libraries.

Nothing here is imported by ``import hibachi``: torch, transformers, rich and
matplotlib load only when a bench runs.
"""

from __future__ import annotations

import time
import warnings
from datetime import UTC, datetime

from .output.progress import NullProgress, Progress
from .results import Report, Section
from .settings import WORKLOADS, BenchSettings, Overrides, preset
from .workloads import Measure, measure_of

__all__ = [
    "WORKLOADS",
    "BenchSettings",
    "NullProgress",
    "Overrides",
    "Progress",
    "Report",
    "preset",
    "run_bench",
]


def run_bench(
    settings: BenchSettings, progress: Progress | None = None, command: str | None = None
) -> Report:
    """Run the workloads of ``settings`` in order; a workload that fails is reported, not raised.

    ``command``: the command line that asked for the run, for the results document.
    """
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
    report = Report(
        version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=describe_machine(settings.device),
        settings=settings.as_json(),
        command=command,
    )
    start = time.perf_counter()
    for name in settings.workloads:
        # Chosen again before each workload: other processes come and go.
        threads = settings.threads or free_cpus(busy_cpus())
        with torch_threads(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # third-party deprecation chatter is not a result
            section = _run_one(name, settings, progress)
        section.settings["torch_threads"] = threads
        report.sections.append(section)
    report.seconds = time.perf_counter() - start
    return report


def _run_one(name: str, settings: BenchSettings, progress: Progress) -> Section:
    start = time.perf_counter()
    try:
        measure: Measure = measure_of(name)
        section = measure(settings, progress)
    except Exception as exc:
        section = Section(name, name.capitalize(), [])
        section.fail(name, exc)
    section.seconds = time.perf_counter() - start
    return section
