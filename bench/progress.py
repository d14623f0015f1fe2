"""Progress reporting: the API takes a reporter, the CLI passes a rich one."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Protocol


class Reporter(Protocol):
    def start(self, total: int, description: str, completed: int = 0) -> None: ...
    def advance(self, n: int = 1, **info: Any) -> None: ...
    def stop(self) -> None: ...


class NullReporter:
    """Reports nothing (the default in the Python API)."""

    def start(self, total: int, description: str, completed: int = 0) -> None:
        pass

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def stop(self) -> None:
        pass


class RichReporter:
    """A rich progress bar with rate, elapsed time and ETA, plus free-form info."""

    def __init__(self, unit: str = "it", console: Any = None) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.unit = unit
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.speed:>6.2f} " + unit + "/s" if False else "{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self._task: Any = None

    def start(self, total: int, description: str, completed: int = 0) -> None:
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, info="", rate="")

    def advance(self, n: int = 1, **info: Any) -> None:
        task = self._progress.tasks[self._task]
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        speed = task.speed
        rate = f"{speed:.2f} {self.unit}/s" if speed else ""
        self._progress.update(self._task, advance=n, info=text, rate=rate)

    def stop(self) -> None:
        self._progress.stop()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a killed job) raises KeyboardInterrupt like Ctrl-C,
    so the caller's ``except KeyboardInterrupt`` saves its progress in both cases."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
