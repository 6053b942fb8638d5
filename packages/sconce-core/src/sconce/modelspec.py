"""Build a model from a spec string: a registered name, ``pkg.module:factory``,
``file.py:Name``, or a folder saved by sconce.

Factories receive the keyword arguments they accept among ``num_classes``, ``in_channels``
and ``image_size`` (taken from the data), so one spec fits any dataset.

Example:
    >>> build_model("demo-cnn", num_classes=10, in_channels=1, image_size=8).__class__.__name__
    'DemoCNN'
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from sconce.errors import ModelError, UnknownNameError


def _call_factory(factory: Callable[..., Any], spec: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = {k: v for k, v in kwargs.items() if takes_any or k in parameters}
    try:
        model = factory(**accepted)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build model {spec!r}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model spec {spec!r} gave a {type(model).__name__}, "
                         "not a torch nn.Module")
    return model


def _load_file_module(path: Path) -> Any:
    name = f"sconce_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from None
    return module


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable a spec names (registered names are looked up in the model registry)."""
    if ":" in spec and not Path(spec).exists():
        where, _, attribute = spec.rpartition(":")
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ModelError(f"model file {where!r} does not exist")
            module = _load_file_module(path)
        else:
            try:
                module = importlib.import_module(where)
            except ImportError as exc:
                raise ModelError(f"cannot import module {where!r} for model spec {spec!r}: "
                                 f"{exc}") from None
        factory = getattr(module, attribute, None)
        if factory is None:
            raise ModelError(f"{where!r} has no attribute {attribute!r}")
        if not callable(factory):
            raise ModelError(f"{spec!r} is not a class or function")
        return factory
    from sconce.plugins import registry

    try:
        return registry().lookup("models", spec)
    except UnknownNameError as exc:
        raise UnknownNameError(
            "model", spec, exc.known,
            "or give pkg.module:factory, file.py:ClassName, or a folder saved by sconce",
        ) from None


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build the model that ``spec`` names (see the module docstring).

    Raises:
        ModelError: a spec that cannot be imported, called, or does not give an nn.Module.
        UnknownNameError: a name that no plugin registered.
    """
    path = Path(spec)
    if path.is_dir() and (path / "model.json").is_file():
        from sconce.serialization import load

        return load(path)
    if path.suffix in (".pt", ".pth", ".pt2") and ":" not in spec:
        raise ModelError(
            f"{spec!r} is a bare weights file; give the folder sconce saved (with model.json), "
            "or pkg.module:factory / file.py:ClassName for the architecture"
        )
    return _call_factory(resolve_factory(spec), spec, kwargs)
