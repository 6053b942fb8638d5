"""A cached manifest of what the installed plugins provide, so that listing commands answer
without importing torch or any plugin.

``sconce techniques`` / ``models`` / ``datasets`` / ``plugins`` and ``sconce --help`` need
only names, kinds, descriptions and config fields, but a plugin's entry point imports its
techniques, and they import torch (seconds). So whenever the full registry is loaded by the
command line, what it holds is written to a manifest in the user's cache folder, keyed by a
fingerprint of the installation: every ``sconce`` entry point with its distribution and
version, the ``SCONCE_PLUGINS`` / ``SCONCE_DISABLE_PLUGIN_AUTOLOAD`` settings, and the
modification time and count of every ``.py`` file of the core and of each plugin's package
(so an editable install that changes is seen at once). The listing commands read the manifest
when its fingerprint matches, and load the plugins (writing a fresh one) when it does not: a
changed installation never shows stale names. ``SCONCE_NO_MANIFEST=1`` turns the cache off.

Example:
    >>> isinstance(fingerprint(), str)
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from importlib import metadata, util
from pathlib import Path
from typing import Any

from sconce.storage import atomic_write_json

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sconce"
MANIFEST_VERSION = 2  # 2: commands carry their short help


def _package_files(top: str) -> tuple[int, float]:
    """How many ``.py`` files the package ``top`` has and their latest modification time."""
    try:
        spec = util.find_spec(top)
    except (ImportError, ValueError):
        return 0, 0.0
    if spec is None:
        return 0, 0.0
    roots = list(spec.submodule_search_locations or [])
    files = [os.path.join(folder, name) for root in roots
             for folder, _, names in os.walk(root) for name in names if name.endswith(".py")]
    if not roots and spec.origin:  # a single-module plugin
        files = [spec.origin]
    latest = max((os.stat(f).st_mtime for f in files if os.path.exists(f)), default=0.0)
    return len(files), latest


def fingerprint() -> str:
    """A hash of everything that changes what the plugins provide (see the module docstring)."""
    parts: list[Any] = [MANIFEST_VERSION, os.environ.get("SCONCE_PLUGINS", ""),
                        os.environ.get("SCONCE_DISABLE_PLUGIN_AUTOLOAD", ""),
                        _package_files("sconce")]
    for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                              key=lambda e: (e.name, e.value)):
        dist = entry_point.dist
        top = entry_point.value.split(":")[0].split(".")[0]
        parts.append([entry_point.name, entry_point.value,
                      dist.metadata["Name"] if dist else "", dist.version if dist else "",
                      _package_files(top)])
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def manifest_path() -> Path:
    """Where the manifest of this Python environment lives (one file per environment)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    environment = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
    return Path(cache) / "sconce" / f"manifest-{environment}.json"


def read_manifest() -> dict[str, Any] | None:
    """The manifest when it matches this installation, else None.

    Example:
        >>> read_manifest() is None or "techniques" in read_manifest()
        True
    """
    if os.environ.get("SCONCE_NO_MANIFEST"):
        return None
    try:
        saved = json.loads(manifest_path().read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint():
        return None
    return saved


def write_manifest(content: dict[str, Any]) -> None:
    """Save ``content`` (techniques, models, datasets, plugins, commands) with the current
    fingerprint; a cache that cannot be written is skipped (the commands still work).

    Example:
        >>> write_manifest({"techniques": []})  # doctest: +SKIP
    """
    if os.environ.get("SCONCE_NO_MANIFEST"):
        return
    try:
        manifest_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest_path(), {**content, "fingerprint": fingerprint()})
    except OSError as exc:
        logger.debug("manifest not written: %s", exc)
