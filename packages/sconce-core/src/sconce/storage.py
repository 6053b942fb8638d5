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
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, TextIO

from sconce.errors import ConfigError

LOCK_NAME = ".sconce.lock"
LOCK_TOKEN_ENV = "SCONCE_LOCK_TOKEN"
_umask_lock = threading.Lock()
_held_lock = threading.Lock()


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


@dataclass
class _Held:
    """A folder lock this process holds: how often it is entered, the open lock file and the
    token written in it (``None`` when shared from the launcher that started this process)."""

    count: int
    handle: TextIO
    token: str | None


_held: dict[Path, _Held] = {}


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (a ``.sconce.lock`` file in it) while the block
    runs, so two runs never write into one folder at once.

    The lock is the operating system's (``flock``): it is released when the process ends,
    even when killed. Within one process the lock is re-entrant (the CLI and the pipeline
    both hold it). A process started by the run that holds the lock (``sconce compress
    --nproc``: see :func:`lock_for_children`) shares it instead of waiting for it: the holder
    writes a random token into the lock file and hands it over in the environment
    (``SCONCE_LOCK_TOKEN``); a process whose token matches the file's while the lock is held
    goes ahead without taking it (and never waits for its own launcher).

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
        held = _held.get(folder)
        if held is not None:
            held.count += 1
    if held is not None:
        try:
            yield folder
        finally:
            with _held_lock:
                held.count -= 1
        return
    handle = open(folder / LOCK_NAME, "a+")  # held open for the whole run
    try:
        acquired = _flock(handle, wait=False)
        token: str | None = None  # None: adopted, the launcher of this process holds it
        if acquired or not _launched_by_holder(handle):
            if not acquired and not wait:
                raise ConfigError(
                    f"another sconce run is writing into {str(folder)!r}; wait for it to "
                    "finish or choose another folder (--out)")
            if not acquired:
                _flock(handle, wait=True)
            token = _write_token(handle)
        with _held_lock:
            _held[folder] = _Held(1, handle, token)
        try:
            yield folder
        finally:
            with _held_lock:
                del _held[folder]
            if token is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


class SharedLock(NamedTuple):
    """What a process started by the lock's holder needs to share it (:func:`lock_for_children`).

    Attributes:
        env: environment entries for the started process (the lock file's token).
        fd: the lock file's descriptor, for ``subprocess.Popen(pass_fds=...)``: the lock then
            lasts while the started process lives, even if this one is killed.
    """

    env: dict[str, str]
    fd: int


def lock_for_children(folder: str | Path) -> SharedLock:
    """Let the processes this one starts share its lock on ``folder`` (see :func:`folder_lock`).

    Raises:
        RuntimeError: this process does not hold the lock itself (a programming error).

    Example:
        >>> import tempfile
        >>> with folder_lock(tempfile.mkdtemp()) as locked:
        ...     list(lock_for_children(locked).env)
        ['SCONCE_LOCK_TOKEN']
    """
    with _held_lock:
        held = _held.get(Path(folder).resolve())
    if held is None or held.token is None:
        raise RuntimeError(f"this process does not hold the lock on {str(folder)!r}")
    return SharedLock({LOCK_TOKEN_ENV: held.token}, held.handle.fileno())


def _flock(handle: TextIO, *, wait: bool) -> bool:
    """Take the exclusive lock on ``handle``'s file; False when another holds it (no wait)."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _write_token(handle: TextIO) -> str:
    """A fresh random token in the lock file just taken (any older one is stale)."""
    token = secrets.token_hex(16)
    handle.seek(0)
    handle.truncate()
    handle.write(token)
    handle.flush()
    return token


def _launched_by_holder(handle: TextIO) -> bool:
    """True when the lock file holds the token this process was started with: the lock's
    holder launched it (and holds the lock for it)."""
    expected = os.environ.get(LOCK_TOKEN_ENV, "").strip()
    if not expected:
        return False
    handle.seek(0)
    return handle.read().strip() == expected
