"""A bench run on the terminal: a rich table per workload, its notes, and a footer line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..results import Column, Report, Row, Section, Value

if TYPE_CHECKING:
    from rich.console import Console, Group

__all__ = ["cells", "footer", "print_report", "section_table", "status_notes"]


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
        table.add_row(*map(Text, cells(row, section.columns)), style=_style(row))
    notes = status_notes(section) + section.notes
    return Group(table, *(Text(f"  {note}", style="dim") for note in notes))


def status_notes(section: Section) -> list[str]:
    """Why each method that did not run was skipped or failed."""
    return [f"{r.method}: {r.status}, {r.note}" for r in section.rows if r.status != "ok"]


def cells(row: Row, columns: list[Column]) -> list[str]:
    """The row's method and its figures, formatted; a skipped or failed row says so."""
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
