"""A bench run for people: a rich table per workload, a JSON file, a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .results import Column, Report, Row, Section, Value

if TYPE_CHECKING:
    from rich.console import Console, Group

__all__ = ["print_report", "write_json", "write_plot"]

# The figure each workload's bar chart shows.
_BARS = {
    "generation": ("tokens_per_s", "tokens/s"),
    "embeddings": ("texts_per_s", "texts/s"),
    "overhead": ("x_floor", "x the asyncio floor (lower is better)"),
}


def print_report(report: Report, console: Console) -> None:
    for section in report.sections:
        console.print(section_table(section))
        console.print()
    machine = report.machine
    console.print(
        f"[dim]hibachi {report.version} · {machine.get('device_name')} · "
        f"{machine.get('cpu_count')} CPUs · {report.settings['preset']} preset · "
        f"{report.seconds:.0f} s[/dim]"
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


def write_plot(report: Report, path: Path) -> bool:
    """Draw every section that has figures into one PNG; False when there was nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _bar_panels(report) + _line_panels(report)
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax, draw in zip(axes.flat, panels, strict=False):
        draw(ax)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(_suptitle(report))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _suptitle(report: Report) -> str:
    m = report.machine
    return (
        f"hibachi bench ({report.settings['preset']}) · {m.get('device_name')} · "
        f"{m.get('cpu_count')} CPUs · {report.created[:10]}"
    )


def _bar_panels(report: Report) -> list[Any]:
    panels = []
    for section in report.sections:
        if section.workload not in _BARS:
            continue
        key, label = _BARS[section.workload]
        rows = [r for r in section.rows if r.status == "ok" and r.values.get(key) is not None]
        if rows:
            panels.append(_bar(section.workload.capitalize(), label, rows, key))
    return panels


def _bar(title: str, label: str, rows: list[Row], key: str) -> Any:
    def draw(ax: Any) -> None:
        names = [r.method for r in rows]
        values = [float(r.values[key]) for r in rows]  # type: ignore[arg-type]
        colors = ["tab:red" if n.startswith("hibachi") else "tab:gray" for n in names]
        bars = ax.barh(names, values, color=colors)
        ax.bar_label(bars, fmt="{:,.3g}", fontsize=8, padding=2)
        ax.invert_yaxis()
        ax.margins(x=0.15)
        ax.set_title(title)
        ax.set_xlabel(label)
        ax.tick_params(axis="y", labelsize=8)

    return draw


def _line_panels(report: Report) -> list[Any]:
    panels = []
    for section in report.sections:
        names = dict.fromkeys(s.panel for s in section.series)
        for name in names:
            series = [s for s in section.series if s.panel == name]
            panels.append(_lines(f"Scaling: {name}", series))
    return panels


def _lines(title: str, series: list[Any]) -> Any:
    def draw(ax: Any) -> None:
        for s in series:
            style = {"linestyle": "--", "color": "tab:gray"} if s.reference else {"marker": "o"}
            if s.label.startswith("hibachi"):
                style["color"] = "tab:red"
            ax.plot(s.x, s.y, label=s.label, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(series[0].x, [str(x) for x in series[0].x])
        ax.set_title(title)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(series[0].unit)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)

    return draw
