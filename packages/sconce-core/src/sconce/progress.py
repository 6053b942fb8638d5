"""Progress bars at the edges (the CLI, training), switchable off.

Example:
    >>> list(progress_bar(range(3), total=3, description="x", enabled=False))
    [0, 1, 2]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled(requested: bool = True) -> bool:
    """Bars show when asked, on a terminal, and unless ``SCONCE_NO_PROGRESS`` is set."""
    return requested and sys.stderr.isatty() and not os.environ.get("SCONCE_NO_PROGRESS")


def progress_bar(items: Iterable[T], *, total: int | None, description: str,
                 enabled: bool = True) -> Iterator[T]:
    """Yield ``items``, drawing a transient rich progress bar on stderr when enabled."""
    if not progress_enabled(enabled):
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
