"""Rich progress bars that library code can drive, or silence for use from Python and tests."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class Bar:
    """A progress bar task; a no-op when disabled."""

    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, amount: float = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=amount, **fields)

    def update(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)

    def log(self, message: str) -> None:
        """A line above the bar; silent when the bar is disabled (metrics.jsonl has every figure)."""
        if self._progress is not None:
            self._progress.console.print(message)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, *, enabled: bool = True, status: str = "", count: bool = False) -> Iterator[Bar]:
    """A bar for ``total`` units; ``status`` is a field the caller updates (e.g. loss, tokens/s)."""
    if not enabled:
        yield Bar(None, None)
        return
    if total is None:  # unknown length: a spinner and the elapsed time
        columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    else:
        columns = [TextColumn("[bold]{task.description}"), BarColumn()]
        columns.append(MofNCompleteColumn() if count else TextColumn("{task.percentage:>5.1f}%"))
        columns += [TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status=status)
        yield Bar(progress, task)
