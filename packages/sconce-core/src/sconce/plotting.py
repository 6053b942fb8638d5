"""Figures without touching matplotlib's global state.

Every plot sconce draws (the report's bars, sensitivity curves) is a
:class:`matplotlib.figure.Figure` built directly, never through ``pyplot`` and never with
``matplotlib.use``, so a user's notebook backend and open figures are left alone. PNGs are
written atomically.

Example:
    >>> import tempfile, pathlib
    >>> figure = new_figure(3, 2)
    >>> _ = figure.add_subplot().plot([0, 1], [1, 0])
    >>> path = save_png(figure, pathlib.Path(tempfile.mkdtemp()) / "line.png")
    >>> path.read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sconce.storage import atomic_save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["COLOURS", "new_figure", "save_png"]

COLOURS: tuple[str, ...] = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                            "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
"""The colour cycle sconce's plots use."""


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches, detached from pyplot.

    Example:
        >>> new_figure(4, 3).get_size_inches().tolist()
        [4.0, 3.0]
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_png(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically and return the path.

    Example:
        >>> save_png(new_figure(2, 2), "plot.png")  # doctest: +SKIP
        PosixPath('plot.png')
    """
    path = Path(path)
    figure.tight_layout()
    atomic_save(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))
    return path
