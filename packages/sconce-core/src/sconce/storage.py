"""Atomic writes: a crash never leaves a half-written file where a finished one should be.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed
over the destination (``os.replace`` is atomic on POSIX and Windows).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> atomic_write_text(path, "hi")
    >>> path.read_text()
    'hi'
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from sconce.errors import ConfigError

LOCK_NAME = ".sconce.lock"
_umask_lock = threading.Lock()
_held_lock = threading.Lock()
_held: dict[Path, int] = {}


def atomic_save(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"; atomic_save(p, lambda f: f.write(b"x"))
        >>> p.read_bytes()
        b'x'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's file-creation mask (files sconce writes get ``0o666 & ~umask``, as
    ``open()`` would give them, not the ``0o600`` of a temporary file).

    Example:
        >>> 0 <= current_umask() <= 0o777
        True
    """
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_save(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"; atomic_write_json(p, {"a": 1})
        >>> p.read_text()
        '{\\n  "a": 1\\n}\\n'
    """
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch  # here, so that the light modules writing JSON do not import torch

    atomic_save(path, lambda handle: torch.save(obj, handle))


def replace_dir(staging: Path, final: Path) -> None:
    """Move a fully written ``staging`` folder to ``final``, replacing an older one.

    The old folder is renamed away first and deleted only after the new one is in place.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(final: Path) -> Path:
    """A fresh empty folder beside ``final`` to write into before :func:`replace_dir`
    (with the permissions ``mkdir`` would give it under the user's umask)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(folder, 0o777 & ~current_umask())
    return folder


def ensure_writable_dir(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that a file can be written in it.

    Raises:
        ConfigError: the folder cannot be created or written (a file is in the way, no
            permission, a read-only disk), in one line naming the folder.

    Example:
        >>> import tempfile, pathlib
        >>> ensure_writable_dir(pathlib.Path(tempfile.mkdtemp()) / "out").is_dir()
        True
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sconce-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
            reason = "a file is in the way"
        raise ConfigError(f"the {what} {str(folder)!r} is not writable ({reason}); "
                          "choose another folder (--out)") from None
    return folder


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (a ``.sconce.lock`` file in it) while the block
    runs, so two runs never write into one folder at once.

    The lock is the operating system's (``flock``): it is released when the process ends,
    even when killed. Within one process the lock is re-entrant (the CLI and the pipeline
    both hold it).

    Args:
        folder: created (and checked writable) if needed.
        wait: wait for the other run to finish instead of refusing.

    Raises:
        ConfigError: another process holds the lock (and ``wait`` is False), or the folder
            is not writable.

    Example:
        >>> import tempfile
        >>> with folder_lock(tempfile.mkdtemp()) as locked:
        ...     (locked / ".sconce.lock").is_file()
        True
    """
    folder = ensure_writable_dir(folder).resolve()
    with _held_lock:
        if folder in _held:
            _held[folder] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield folder
        finally:
            with _held_lock:
                _held[folder] -= 1
        return
    handle = open(folder / LOCK_NAME, "a")  # held open for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ConfigError(
                f"another sconce run is writing into {str(folder)!r}; wait for it to finish "
                "or choose another folder (--out)") from None
        with _held_lock:
            _held[folder] = 1
        try:
            yield folder
        finally:
            with _held_lock:
                del _held[folder]
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
