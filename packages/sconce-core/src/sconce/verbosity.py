"""What sconce logs for a Python user, and how to turn it down or hand it to your own logging.

A library normally leaves logging to the application; but a compression run is long, and a
script that prints nothing for twenty minutes looks hung. So sconce's own logger (``sconce``,
which every core module's logger and the progress lines of :mod:`sconce.progress` sit under)
is set to INFO and given a default handler on stderr (stages, fine-tuning epochs, progress,
timing), installed on ``import sconce``. That handler writes only while the application has
not configured logging (the root logger has no handler); once it has (``logging.basicConfig``,
a framework, pytest), records propagate to the application's handlers as usual and the
default handler stays silent, so nothing is printed twice. The root logger is never touched.

- ``sconce.set_verbosity("warning")`` (or the environment variable
  ``SCONCE_VERBOSITY=warning``) keeps sconce's lines to warnings; ``"debug"`` shows more.
- ``sconce.disable_default_handler()`` removes the handler and returns the ``sconce`` logger to
  the root logger's level.
- ``compress(..., progress=False)`` stops the progress lines of one run.

Plugins log under their own package names (``sconce_prune``, ...), which propagate to the
root logger as usual; their long steps report progress through :func:`sconce.progress.track`,
which the default handler shows.

Example:
    >>> set_verbosity("warning"); logging.getLogger("sconce").level == logging.WARNING
    True
    >>> set_verbosity("info")
"""

from __future__ import annotations

import json
import logging
import os
import sys

from sconce.errors import ConfigError

LOGGER_NAME = "sconce"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
_handlers: list[logging.Handler] = []


def _level(value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        return LEVELS[value.lower()]
    except KeyError:
        raise ConfigError(f"unknown verbosity {value!r}; use one of "
                          f"{', '.join(LEVELS)}") from None


def _application_silent(record: logging.LogRecord) -> bool:
    """True while the application has configured no handler of its own on the root logger."""
    return not logging.getLogger().handlers


def install_default_handler() -> None:
    """Give the ``sconce`` logger its stderr handler (once), at ``SCONCE_VERBOSITY`` or INFO.

    Example:
        >>> install_default_handler(); len(_handlers)
        1
    """
    if _handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s sconce: %(message)s", "%H:%M:%S"))
    handler.addFilter(_application_silent)
    root = logging.getLogger(LOGGER_NAME)
    root.addHandler(handler)
    _handlers.append(handler)
    env = os.environ.get("SCONCE_VERBOSITY")
    try:
        root.setLevel(_level(env) if env else logging.INFO)
    except ConfigError:
        root.setLevel(logging.INFO)


def set_verbosity(level: str | int) -> None:
    """Show sconce's log lines from ``level`` up: ``"debug"``, ``"info"`` (the default),
    ``"warning"``, ``"error"``, or a :mod:`logging` level number.

    Example:
        >>> set_verbosity("info")
    """
    logging.getLogger(LOGGER_NAME).setLevel(_level(level))


def disable_default_handler() -> None:
    """Remove sconce's handler and level: the application's logging configuration decides.

    Example:
        >>> disable_default_handler(); logging.getLogger("sconce").level
        0
        >>> install_default_handler()
    """
    root = logging.getLogger(LOGGER_NAME)
    for handler in _handlers:
        root.removeHandler(handler)
    _handlers.clear()
    root.setLevel(logging.NOTSET)


class JsonLines(logging.Formatter):
    """One JSON object per log record, for machines reading a run's progress
    (``sconce --log-json``): ``time`` (Unix seconds), ``level``, ``logger``, ``message``, and
    ``error`` with the exception's type and message when the record carries one.

    Example:
        >>> record = logging.LogRecord("sconce.pipeline", logging.INFO, __file__, 1,
        ...                            "stage %s", ("Pruned",), None)
        >>> line = json.loads(JsonLines().format(record))
        >>> line["level"], line["logger"], line["message"]
        ('info', 'sconce.pipeline', 'stage Pruned')
    """

    def format(self, record: logging.LogRecord) -> str:
        event = {"time": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            event["error"] = f"{type(error).__name__}: {error}"
        return json.dumps(event, default=str)
