"""What a bench run measured: sections of rows, and curves for the plot.

Every figure the table shows, the JSON holds too; `Report.as_json` is the
schema the CLI writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Column", "Report", "Row", "Section", "Series", "Value"]

Value = float | int | str | bool | None


@dataclass(frozen=True)
class Column:
    """A figure of a section: its key in each row, its table header and format."""

    key: str
    header: str
    fmt: str = "{:,.1f}"


@dataclass
class Row:
    """One method of a workload: its figures, or why it was skipped or failed."""

    method: str
    values: dict[str, Value] = field(default_factory=dict)
    status: str = "ok"  # "ok", "skipped" or "failed"
    note: str = ""


@dataclass
class Series:
    """A curve of the scaling plot: throughput at each concurrency."""

    panel: str
    label: str
    unit: str
    x: list[int]
    y: list[float]
    reference: bool = False  # a flat line to compare against, not a measured curve


@dataclass
class Section:
    """The results of one workload."""

    workload: str
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, method: str, **values: Value) -> Row:
        row = Row(method, dict(values))
        self.rows.append(row)
        return row

    def skip(self, method: str, why: str) -> Row:
        row = Row(method, status="skipped", note=why)
        self.rows.append(row)
        return row

    def fail(self, method: str, error: BaseException) -> Row:
        row = Row(method, status="failed", note=f"{type(error).__name__}: {error}")
        self.rows.append(row)
        return row

    def row(self, method: str) -> Row | None:
        return next((r for r in self.rows if r.method == method and r.status == "ok"), None)


@dataclass
class Report:
    """A whole bench run."""

    version: str
    created: str  # UTC, ISO 8601, when the run began
    machine: dict[str, Any]
    settings: dict[str, Any]
    sections: list[Section] = field(default_factory=list)
    seconds: float = 0.0
    command: str | None = None  # the command line that asked for the run

    @property
    def threads(self) -> str:
        """PyTorch's thread count over the run's workloads: "2", or "1-2" when it changed."""
        counts = {s.settings.get("torch_threads") for s in self.sections}
        numbers = sorted(int(c) for c in counts if c)
        if not numbers:
            return "?"
        return str(numbers[0]) if numbers[0] == numbers[-1] else f"{numbers[0]}-{numbers[-1]}"

    @property
    def failed(self) -> bool:
        return any(r.status == "failed" for s in self.sections for r in s.rows)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sections"] = {s["workload"]: s for s in data["sections"]}
        return data
