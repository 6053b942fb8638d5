"""Progress of long steps: a live bar on a terminal, periodic log lines everywhere else.

Every long step (training epochs, sensitivity scans, calibration, search, measurement) wraps
its loop in :func:`track` (a technique uses :meth:`sconce.Context.track`, which follows the
run's ``progress`` option). On a terminal (stderr is a TTY) a transient rich bar is drawn;
otherwise (a Python script's output, CI logs, a pipe) a line goes through :mod:`logging`
(logger ``sconce.progress``, level INFO) every ``every`` seconds and when the step ends:
``epoch 1/3: 120/469 (26%), elapsed 0:12, ETA 0:35``. ``enabled=False`` (``quiet=True`` /
``--quiet`` / ``progress=False``) or the environment variable ``SCONCE_NO_PROGRESS`` silences
both.

Example:
    >>> list(track(range(3), total=3, description="x", enabled=False))
    [0, 1, 2]
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0
"""How often a non-terminal run logs a step's progress."""
_switch = {"on": True}


def set_progress(enabled: bool, *, lines_only: bool = False) -> None:
    """Turn every progress bar and progress line of this process on or off (``--quiet``);
    ``lines_only`` shows progress as log lines even on a terminal (``--log-json``).

    Example:
        >>> set_progress(False); progress_enabled(), set_progress(True)
        (False, None)
    """
    _switch["on"] = enabled
    _switch["lines_only"] = lines_only


def progress_enabled(requested: bool = True) -> bool:
    """Progress shows when asked, unless switched off (:func:`set_progress`) or the
    environment variable ``SCONCE_NO_PROGRESS`` is set.

    Example:
        >>> progress_enabled(False)
        False
    """
    return requested and _switch["on"] and not os.environ.get("SCONCE_NO_PROGRESS")


def on_terminal() -> bool:
    """Whether stderr is a terminal (a live bar) rather than a log, a pipe or a file."""
    return sys.stderr.isatty() and not _switch.get("lines_only", False)


def track(items: Iterable[T], *, total: int | None = None, description: str = "",
          enabled: bool = True, every: float = LOG_EVERY_SECONDS) -> Iterator[T]:
    """Yield ``items``, showing progress (a bar on a terminal, log lines otherwise).

    Args:
        items: the steps.
        total: how many there are (taken from ``len(items)`` when it has one); without it
            the lines carry no percentage or ETA.
        description: what the step is (``"epoch 2/5"``, ``"sensitivity scan"``).
        enabled: False shows nothing.
        every: seconds between log lines when not on a terminal.

    Example:
        >>> for _ in track(range(2), description="calibration", enabled=False):
        ...     pass
    """
    if total is None and isinstance(items, Sized):
        total = len(items)
    if not progress_enabled(enabled):
        yield from items
        return
    if on_terminal():
        yield from _bar(items, total, description)
        return
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            logger.info("%s", progress_line(description, done, total, now - started))
    elapsed = time.monotonic() - started
    if done and (last != started or elapsed >= every):  # a long step says when it ends
        logger.info("%s", progress_line(description, done, total, elapsed))


def progress_line(description: str, done: int, total: int | None, elapsed: float) -> str:
    """One progress line: step, percentage, elapsed time and ETA.

    Example:
        >>> progress_line("epoch 1/3", 120, 480, 12.0)
        'epoch 1/3: 120/480 (25%), elapsed 0:12, ETA 0:36'
    """
    head = f"{description}: " if description else ""
    if not total:
        return f"{head}{done} steps, elapsed {_clock(elapsed)}"
    eta = elapsed / done * (total - done) if done else 0.0
    return (f"{head}{done}/{total} ({100 * done / total:.0f}%), elapsed {_clock(elapsed)}, "
            f"ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _bar(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
