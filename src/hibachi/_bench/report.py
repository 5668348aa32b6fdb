"""A bench run for people: a rich table per workload, a JSON file, Markdown tables.

The PNG is drawn by `plot`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .results import Column, Report, Row, Section, Value

if TYPE_CHECKING:
    from rich.console import Console, Group

__all__ = ["markdown", "print_report", "write_json"]


def print_report(report: Report, console: Console) -> None:
    from rich.text import Text

    for section in report.sections:
        console.print(section_table(section))
        console.print()
    console.print(Text(footer(report), style="dim"))


def footer(report: Report) -> str:
    """One line: what ran, on what, how long."""
    m, threads = report.machine, report.threads
    return (
        f"hibachi {report.version} · {m.get('device_name')} · {m.get('cpu_count')} CPUs, "
        f"{threads} PyTorch thread{'' if threads == '1' else 's'} · torch {m.get('torch')} · "
        f"{report.settings['preset']} preset · {report.seconds:.0f} s · {report.created}"
    )


def section_table(section: Section) -> Group:
    """The section's table, then its notes (plain text: a note like ``[peers]`` is not markup)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(section.title), title_justify="left")
    table.add_column("method", style="bold", no_wrap=True)
    for column in section.columns:
        table.add_column(column.header, justify="right")
    for row in section.rows:
        table.add_row(*map(Text, _cells(row, section.columns)), style=_style(row))
    notes = [f"{r.method}: {r.status}, {r.note}" for r in section.rows if r.status != "ok"]
    return Group(table, *(Text(f"  {note}", style="dim") for note in notes + section.notes))


def _cells(row: Row, columns: list[Column]) -> list[str]:
    if row.status != "ok":
        return [row.method, row.status] + [""] * (len(columns) - 1)
    return [row.method] + [_format(column, row.values.get(column.key)) for column in columns]


def _format(column: Column, value: Value) -> str:
    if value is None:
        return "—"
    return column.fmt.format(value)


def _style(row: Row) -> str:
    if row.status == "failed":
        return "red"
    if row.status == "skipped":
        return "dim"
    return "green" if row.method.startswith("hibachi") else ""


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2, default=_plain) + "\n")


def _plain(value: object) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def markdown(report: Report) -> str:
    """Every section as a Markdown table with its notes, then the footer line."""
    parts = [_markdown_section(section) for section in report.sections]
    return "\n\n".join([*parts, f"_{footer(report)}_"]) + "\n"


def _markdown_section(section: Section) -> str:
    headers = ["method", *(c.header for c in section.columns)]
    lines = [
        f"**{section.title}**",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["--:"] * len(section.columns)) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row, section.columns)) + " |" for row in section.rows]
    notes = [f"{r.method}: {r.status}, {r.note}" for r in section.rows if r.status != "ok"]
    if notes + section.notes:
        lines.append("")
        lines += [f"- {note}" for note in notes + section.notes]
    return "\n".join(lines)
