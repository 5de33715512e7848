"""Progress output that library code can drive, or silence for use from Python and tests.

On a terminal a :class:`Bar` is a rich progress bar. When standard error is not a terminal (a
batch job, ``| tee log``, pytest's capture) the same bar writes plain lines instead, which read
well in a log: one whenever the caller passes a status (a training loop does every
``--log-every`` steps), and for bars the caller does not report on, one at most every
:data:`PLAIN_EVERY_S` seconds or each tenth of the total, and one at the end.

:func:`console` is the one way the commands make a rich console: it never wraps long lines (a
piped rich console would otherwise wrap at 80 columns and split paths and figures).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

WIDE = 1 << 16  # the width of a console that is not a terminal: no line is ever wrapped
PLAIN_EVERY_S = 30.0  # a bar the caller does not report on writes a plain line at most this often ...
PLAIN_STEPS = 10  # ... or each tenth of its total, and once at its end


def console(stderr: bool = False) -> Console:
    """A console on standard output (or error) that never wraps: soft-wrapped text, and when the
    stream is not a terminal a very large width (so tables keep their rows on one line too)."""
    out = Console(stderr=stderr, soft_wrap=True, highlight=False)
    if not out.is_terminal:
        out.width = WIDE
    return out


def duration(seconds: float) -> str:
    """``1:02:03``-style text (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Bar:
    """A progress bar task; a no-op when disabled.

    ``update(status=...)`` (or ``advance(..., status=...)``) sets the status the caller reports
    (loss, tokens/s): the bar's last column on a terminal, a plain line of its own otherwise.
    """

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


class PlainBar(Bar):
    """A bar for a stream that is not a terminal: plain lines, no redraws (see the module docstring)."""

    def __init__(self, out: Console, description: str, total: float | None, *, count: bool, unit: str | None,
                 completed: float, every_s: float | None):
        super().__init__(None, None)
        self._out, self._description, self._total = out, description, total
        self._count, self._unit, self._every_s = count, unit, every_s
        self.completed = float(completed)
        self._first = float(completed)  # resumed work does not count towards the speed
        self._start = self._last_time = time.perf_counter()
        self._last_done = self.completed
        self._last_tenth = self._tenth()

    def _tenth(self) -> int:
        if not self._total:
            return 0
        return int(PLAIN_STEPS * min(self.completed, self._total) / self._total)

    def _position(self) -> str:
        if self._total is None:
            return f"{self.completed:,.0f} done" if self._count else ""
        if self._count or self._unit:
            done = f"{self.completed:,.0f}/{self._total:,.0f}"
            return f"{self._unit} {done}" if self._unit else done
        return f"{100 * self.completed / self._total:.1f}%" if self._total else "100.0%"

    def _eta(self) -> str:
        elapsed = time.perf_counter() - self._start
        if self._total is None:
            return f"elapsed {duration(elapsed)}"
        if self.completed >= self._total:
            return f"done in {duration(elapsed)}"
        rate = (self.completed - self._first) / elapsed if elapsed > 0 else 0.0
        return f"ETA {duration((self._total - self.completed) / rate) if rate > 0 else '?'}"

    def line(self, status: str = "") -> None:
        """Write the bar's state as one line (``status``: the caller's figures)."""
        parts = [part for part in (self._position(), status, self._eta()) if part]
        self._out.print(f"{escape(self._description)}: " + "  ".join(escape(part) for part in parts))
        self._last_time, self._last_done, self._last_tenth = time.perf_counter(), self.completed, self._tenth()

    def advance(self, amount: float = 1, **fields) -> None:
        self.completed += amount
        if fields.get("status"):
            self.line(fields["status"])
        elif self._every_s is not None:
            now = time.perf_counter()
            if now - self._last_time >= self._every_s or self._tenth() > self._last_tenth:
                self.line()

    def update(self, **fields) -> None:
        if "completed" in fields:
            self.completed = float(fields["completed"])
        if fields.get("status"):
            self.line(fields["status"])

    def log(self, message: str) -> None:
        self._out.print(message)

    def close(self) -> None:
        """The end line, for a bar whose caller does not report on it (and only if it moved since the last line)."""
        if self._every_s is not None and self.completed != self._last_done:
            self.line()


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, *, enabled: bool = True, status: str = "", count: bool = False,
                 unit: str | None = None, completed: float = 0, every_s: float | None = PLAIN_EVERY_S) -> Iterator[Bar]:
    """A bar for ``total`` units (None: unknown, a spinner) of which ``completed`` are done already.

    ``status`` is a field the caller updates (e.g. loss, tokens/s); ``count`` shows ``done/total``
    rather than a percentage, ``unit`` names what is counted (``step 20/100``). When standard
    error is not a terminal the bar writes plain lines: each status the caller passes, and, unless
    ``every_s`` is None (a caller that reports on its own cadence), one at most every ``every_s``
    seconds or tenth of the total and one at the end.
    """
    if not enabled:
        yield Bar(None, None)
        return
    out = console(stderr=True)
    if not out.is_terminal:
        bar = PlainBar(out, description, total, count=count, unit=unit, completed=completed, every_s=every_s)
        yield bar
        bar.close()
        return
    if total is None:  # unknown length: a spinner and the elapsed time
        columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    else:
        columns = [TextColumn("[bold]{task.description}"), BarColumn()]
        columns.append(MofNCompleteColumn() if count or unit else TextColumn("{task.percentage:>5.1f}%"))
        columns += [TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, status=status)
        yield Bar(progress, task)
