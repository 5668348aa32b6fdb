"""The results document of a bench run: one Markdown file that says when, where, on what code
and by which command the figures were measured, then every table with its notes.

`document_name` gives the file its standard name, ``<date>-<time>-<machine>-<preset>``
(``2026-12-03-1434-intel-xeon-processor-2cpu-full``), under which the run's JSON
and plot sit beside it in ``benchmarks/results/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..results import Report, Section
from .table import cells, footer, status_notes

__all__ = ["READING", "document_name", "markdown", "machine_slug"]

READING = (
    "Ratios measured side by side in one run are what carries from one run to the next; "
    "rates move with the machine and the moment (other work on it, its clock). A method's "
    "figure is its best of its runs (other work only ever slows a run down) unless its notes "
    "say it is a median of alternating rounds. `hibachi` rows are hibachi; the others are "
    "the usual ways of doing without it."
)


def markdown(report: Report, files: dict[str, Path] | None = None, here: Path | None = None) -> str:
    """The results document: the run's provenance, every section's table and notes.

    ``files`` ("json", "plot"): the run's other outputs, linked relative to
    ``here`` (the document's folder); the plot is shown under the tables.
    """
    links = {kind: _relative(path, here) for kind, path in (files or {}).items()}
    parts = [
        f"# hibachi bench: {report.settings['preset']} preset, {_when(report)}",
        _provenance(report, links),
        f"**Reading it.** {READING}",
        *(_section(section) for section in report.sections),
    ]
    if "plot" in links:
        parts.append(f"![the charts of this run]({links['plot']})")
    parts.append(f"_{footer(report)}_")
    return "\n\n".join(parts) + "\n"


def document_name(report: Report) -> str:
    """``<YYYY-MM-DD>-<HHMM>-<machine>-<preset>``: the stem of the run's files."""
    day, clock = report.created[:10], report.created[11:16].replace(":", "")
    return f"{day}-{clock}-{machine_slug(report.machine)}-{report.settings['preset']}"


def machine_slug(machine: dict[str, Any]) -> str:
    """The machine in a few lowercase words: the GPU's name on CUDA, else the CPU's and its
    count (``intel-xeon-processor-2cpu``)."""
    if machine.get("device") == "cuda":
        return _slug(str(machine.get("device_name")))
    return f"{_slug(str(machine.get('cpu')))}-{machine.get('cpu_count')}cpu"


def _slug(name: str) -> str:
    name = re.sub(r"\((r|tm|c)\)|\bcpu\b|@.*$", " ", name, flags=re.IGNORECASE)
    words = re.findall(r"[a-z0-9]+", name.lower())
    return "-".join(words)[:40].strip("-") or "unknown"


def _when(report: Report) -> str:
    return f"{report.created[:10]} {report.created[11:16]} UTC"


def _provenance(report: Report, links: dict[str, str]) -> str:
    m = report.machine
    rows = [
        (
            "date",
            f"{report.created[:10]} {report.created[11:19]} UTC (start), {report.seconds:.0f} s",
        ),
        ("command", f"`{report.command}`" if report.command else "—"),
        ("code", f"hibachi {report.version}, commit {m.get('commit') or 'unknown'}"),
        ("machine", _machine(m)),
        ("load average at start", _load(m)),
        ("device", f"{m.get('device')} ({m.get('device_name')})"),
        ("PyTorch threads", report.threads),
        ("software", _software(m)),
    ]
    if links:
        rows.append(("files", " · ".join(f"[{kind}]({link})" for kind, link in links.items())))
    lines = ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]
    return "\n".join(lines)


def _machine(m: dict[str, Any]) -> str:
    memory = m.get("memory_gib")
    parts = [
        f"{m.get('cpu')}",
        f"{m.get('cpu_count')} CPUs",
        f"{memory:g} GiB memory" if memory else "memory unknown",
        f"GPU: {m['gpu']}" if m.get("gpu") else "no GPU",
    ]
    return ", ".join(parts)


def _load(m: dict[str, Any]) -> str:
    load = m.get("load_average")
    return "unknown" if load is None else f"{load:.2f} (1 minute, with {m.get('cpu_count')} CPUs)"


def _software(m: dict[str, Any]) -> str:
    return (
        f"Python {m.get('python')}, torch {m.get('torch')}, transformers "
        f"{m.get('transformers')}; {m.get('platform')}"
    )


def _section(section: Section) -> str:
    headers = ["method", *(c.header for c in section.columns)]
    lines = [
        f"## {section.title}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["--:"] * len(section.columns)) + "|",
    ]
    lines += ["| " + " | ".join(cells(row, section.columns)) + " |" for row in section.rows]
    notes = status_notes(section) + section.notes
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def _relative(path: Path, here: Path | None) -> str:
    if here is None:
        return path.as_posix()
    return Path(os.path.relpath(path.resolve(), here.resolve())).as_posix()
