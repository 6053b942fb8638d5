"""Plugin discovery and the registries of techniques, metrics, datasets and models.

Plugins are found through the ``sconce`` entry-point group. Loading is lazy (nothing is
imported until something asks for a plugin-provided thing) and idempotent. The core's own
built-in plugin modules are registered exactly as external ones are.

Environment:
    ``SCONCE_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry-point plugin (built-ins still load).
    ``SCONCE_PLUGINS=prune,quant`` loads only the entry points with those names.

Example:
    >>> import sconce
    >>> pm = sconce.load_plugins()
    >>> "sconce.builtin.metrics" in {info.name for info in plugin_infos()}
    True
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from sconce import hookspecs
from sconce.errors import PluginError, UnknownNameError
from sconce.layers import ChannelwiseLayer
from sconce.technique import validate_technique

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sconce"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "sconce.builtin.metrics",
    "sconce.builtin.datasets",
    "sconce.builtin.models",
)

_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_infos: list[PluginInfo] = []
_registry: Registry | None = None


@dataclass(frozen=True)
class PluginInfo:
    """One plugin the core tried to load.

    Attributes:
        name: the entry-point name (``prune``) or the module name of a built-in.
        module: the imported module's name ("" when the import failed).
        distribution: the installed distribution that declared it ("sconce-core" for built-ins).
        version: that distribution's version.
        hooks: names of the hooks it implements.
        error: why it failed to load, or "" when it loaded.
    """

    name: str
    module: str
    distribution: str
    version: str
    hooks: tuple[str, ...] = ()
    error: str = ""


@dataclass
class Registry:
    """Everything the loaded plugins registered, by name, with the plugin that offered it.

    Example:
        >>> reg = registry()
        >>> "accuracy" in reg.metrics
        True
    """

    techniques: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Callable[..., Any]] = field(default_factory=dict)
    models: dict[str, Callable[..., Any]] = field(default_factory=dict)
    layer_rules: dict[type, Any] = field(default_factory=dict)
    origin: dict[tuple[str, Any], str] = field(default_factory=dict)

    def add(self, kind: str, name: Any, item: Any, plugin: str) -> None:
        """Add ``item`` under ``name``; a duplicate name is a :class:`PluginError`."""
        table: dict[Any, Any] = getattr(self, kind)
        if kind != "layer_rules" and (not isinstance(name, str) or not name):
            raise PluginError(f"plugin {plugin!r} registered a {kind[:-1]} without a name")
        if name in table:
            first = self.origin[(kind, name)]
            raise PluginError(
                f"{kind[:-1]} {name!r} is registered twice (by {first!r} and {plugin!r}); "
                "uninstall one of the two plugins"
            )
        table[name] = item
        self.origin[(kind, name)] = plugin

    def layer_rule(self, module: object) -> Any:
        """The :class:`sconce.ChannelwiseLayer` described for ``module``'s class or its
        nearest described base class, or None.

        Example:
            >>> from torch import nn
            >>> registry().layer_rule(nn.ReLU()) is None
            True
        """
        for cls in type(module).__mro__:
            if cls in self.layer_rules:
                return self.layer_rules[cls]
        return None

    def lookup(self, kind: str, name: str, hint: str = "") -> Any:
        """Return the item registered under ``name`` or raise :class:`UnknownNameError`."""
        table: dict[str, Any] = getattr(self, kind)
        try:
            return table[name]
        except KeyError:
            raise UnknownNameError(kind[:-1], name, table, hint) from None


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def _hook_names(plugin: object) -> tuple[str, ...]:
    return tuple(sorted(n for n in dir(plugin) if n in hookspecs.HOOK_NAMES))


def _selected_entry_points() -> Iterator[metadata.EntryPoint]:
    if os.environ.get("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0"):
        return
    wanted_env = os.environ.get("SCONCE_PLUGINS", "").strip()
    wanted = {w.strip() for w in wanted_env.split(",") if w.strip()} if wanted_env else None
    seen: set[str] = set()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in seen or (wanted is not None and entry_point.name not in wanted):
            continue
        seen.add(entry_point.name)
        yield entry_point


def _register(manager: pluggy.PluginManager, plugin: ModuleType, info: PluginInfo) -> None:
    manager.register(plugin, name=info.name)
    _infos.append(info)


def load_plugins() -> pluggy.PluginManager:
    """Load the built-in and installed plugins once; later calls return the same manager.

    A plugin that fails to import or to register is logged with its name and the error and
    skipped; it never breaks the core.

    Returns:
        The pluggy plugin manager holding every loaded plugin.

    Example:
        >>> load_plugins() is load_plugins()
        True
    """
    global _manager
    with _lock:
        if _manager is not None:
            return _manager
        manager = _new_manager()
        core_version = _distribution_version("sconce-core")
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            info = PluginInfo(
                module_name, module_name, "sconce-core", core_version, _hook_names(module)
            )
            _register(manager, module, info)
        for entry_point in _selected_entry_points():
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            dist_version = dist.version if dist is not None else "?"
            try:
                plugin = entry_point.load()
                info = PluginInfo(
                    entry_point.name, plugin.__name__, dist_name, dist_version, _hook_names(plugin)
                )
                _register(manager, plugin, info)
            except Exception as exc:  # a broken plugin must never break the core
                logger.warning(
                    "sconce plugin %r (%s) failed to load and is skipped: %s: %s",
                    entry_point.name, entry_point.value, type(exc).__name__, exc,
                )
                _infos.append(
                    PluginInfo(entry_point.name, "", dist_name, dist_version,
                               error=f"{type(exc).__name__}: {exc}")
                )
        _manager = manager
        return manager


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, with plugins loaded.

    Example:
        >>> plugin_manager().hook.sconce_model_adapter  # doctest: +ELLIPSIS
        <HookCaller 'sconce_model_adapter'>
    """
    return load_plugins()


def plugin_infos() -> list[PluginInfo]:
    """Every plugin the core tried to load, in load order, failed ones included.

    Example:
        >>> any(info.distribution == "sconce-core" for info in plugin_infos())
        True
    """
    load_plugins()
    return list(_infos)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object or module at run time (for scripts and tests).

    The registries are rebuilt on next use.

    Example:
        >>> import types
        >>> register_plugin(types.SimpleNamespace(), name="nothing")
        >>> unregister_plugin("nothing")
    """
    global _registry
    with _lock:
        manager = load_plugins()
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        manager.register(plugin, name=plugin_name)
        _infos.append(PluginInfo(plugin_name, plugin_name, "(runtime)", "", _hook_names(plugin)))
        _registry = None


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered under ``name``; the registries are rebuilt on next use."""
    global _registry
    with _lock:
        manager = load_plugins()
        manager.unregister(name=name)
        _infos[:] = [info for info in _infos if info.name != name]
        _registry = None


def reset_plugins() -> None:
    """Forget every loaded plugin; the next use loads them again (tests use this).

    Example:
        >>> reset_plugins()
    """
    global _manager, _registry
    with _lock:
        _manager = None
        _registry = None
        _infos.clear()


_REGISTRATION_HOOKS = {
    "techniques": "sconce_register_techniques",
    "metrics": "sconce_register_metrics",
    "datasets": "sconce_register_datasets",
    "models": "sconce_register_models",
    "layer_rules": "sconce_register_layer_rules",
}


def registry() -> Registry:
    """The registries filled by every loaded plugin's ``sconce_register_*`` hooks.

    Each plugin's registration runs on its own: one that raises is logged and skipped, and
    what the others registered stays.

    Example:
        >>> "digits" in registry().datasets
        True
    """
    global _registry
    with _lock:
        if _registry is not None:
            return _registry
        manager = load_plugins()
        reg = Registry()
        for kind, hook_name in _REGISTRATION_HOOKS.items():
            caller = getattr(manager.hook, hook_name)
            for impl in reversed(caller.get_hookimpls()):
                _run_registration(reg, kind, impl)
        _registry = reg
        return reg


def _run_registration(reg: Registry, kind: str, impl: pluggy.HookImpl) -> None:
    plugin = impl.plugin_name
    register: Callable[..., None]
    if kind == "techniques":
        def register(item: Any) -> None:
            try:
                validate_technique(item)
            except PluginError as exc:  # refuse this technique, keep the plugin's others
                logger.warning("sconce plugin %r: %s; the technique is skipped", plugin, exc)
                return
            reg.add(kind, item.name, item, plugin)
    elif kind == "metrics":
        def register(item: Any) -> None:
            reg.add(kind, getattr(item, "name", ""), item, plugin)
    elif kind == "layer_rules":
        def register(module_type: Any, rule: Any) -> None:
            if not isinstance(module_type, type):
                raise PluginError(f"plugin {plugin!r} described a layer rule for "
                                  f"{module_type!r}, which is not a class")
            if not isinstance(rule, ChannelwiseLayer):
                raise PluginError(f"plugin {plugin!r} described {module_type.__name__} with "
                                  f"{type(rule).__name__}; use sconce.ChannelwiseLayer")
            reg.add(kind, module_type, rule, plugin)
    else:
        def register(name: str, factory: Callable[..., Any]) -> None:
            if not callable(factory):
                raise PluginError(f"plugin {plugin!r} registered {kind[:-1]} {name!r} "
                                  "with a factory that is not callable")
            reg.add(kind, name, factory, plugin)
    try:
        impl.function(register=register)
    except Exception as exc:  # a misbehaving plugin must never break the core
        logger.warning("sconce plugin %r failed in %s and is skipped: %s: %s",
                       plugin, impl.function.__name__, type(exc).__name__, exc)
