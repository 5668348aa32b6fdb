"""The bench's PNG (matplotlib, Agg): a bar chart per workload, a line chart per scaling panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import Report, Row, Series

__all__ = ["write_plot"]

# The figure each workload's bar chart shows.
_BARS = {
    "generation": ("tokens_per_s", "tokens/s"),
    "embeddings": ("texts_per_s", "texts/s"),
    "overhead": ("x_floor", "x the asyncio floor (lower is better)"),
}


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
    m, threads = report.machine, report.threads
    return (
        f"hibachi bench ({report.settings['preset']}) · {m.get('device_name')} · "
        f"{m.get('cpu_count')} CPUs, {threads} PyTorch thread{'' if threads == '1' else 's'} · "
        f"{report.created[:10]}"
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
        ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=8, padding=2)
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
            panels.append(_lines(f"{section.workload.capitalize()}: {name}", series))
    return panels


def _lines(title: str, series: list[Series]) -> Any:
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


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
