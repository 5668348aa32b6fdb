"""Telling the user what the bench is doing, without tying the measuring code to rich."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

__all__ = ["NullProgress", "Progress", "RichProgress"]


class Progress(Protocol):
    """One bar per workload; ``doing`` names the step now running and counts the one before."""

    def begin(self, workload: str, steps: int) -> None: ...

    def doing(self, label: str) -> None: ...


class NullProgress:
    """Progress that shows nothing (for library use and tests)."""

    def begin(self, workload: str, steps: int) -> None:
        pass

    def doing(self, label: str) -> None:
        pass


class RichProgress:
    """rich progress bars: a context manager, one bar per workload."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bars

        self._bars = Bars(
            TextColumn("[bold]{task.fields[workload]:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        )
        self._task: TaskID | None = None
        self._steps = 0
        self._started = 0

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish_current()
        self._bars.stop()

    def begin(self, workload: str, steps: int) -> None:
        self._finish_current()
        self._task = self._bars.add_task("", total=steps, workload=workload)
        self._steps, self._started = steps, 0

    def doing(self, label: str) -> None:
        if self._task is not None:
            done = min(self._started, self._steps)
            self._bars.update(self._task, completed=done, description=label)
            self._started += 1

    def _finish_current(self) -> None:
        if self._task is not None:
            self._bars.update(self._task, completed=self._steps, description="done")
            self._task = None
