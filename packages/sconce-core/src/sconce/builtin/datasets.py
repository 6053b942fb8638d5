"""Built-in plugin: the ``digits`` and ``fashion-mnist`` datasets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sconce.hookspecs import hookimpl


@hookimpl
def sconce_register_datasets(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register the built-in datasets; their factories import nothing until called."""
    from sconce.datasets import digits, fashion_mnist

    register("digits", digits)
    register("fashion-mnist", fashion_mnist)
