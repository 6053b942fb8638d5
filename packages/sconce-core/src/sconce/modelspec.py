"""Build a model from a spec string: a registered name, ``pkg.module:factory`` or
``file.py:Name``.

Factories receive the keyword arguments they accept among ``num_classes``, ``in_channels``
and ``image_size`` (taken from the data), so one spec fits any dataset. Registered names are
looked up in the ``registered`` table the caller passes (the plugin registry's models, for
:func:`sconce.api.build_model`); a folder saved by sconce is opened by :func:`sconce.load`.

Example:
    >>> from sconce.models import MODEL_FACTORIES
    >>> build_model("demo-cnn", MODEL_FACTORIES, num_classes=10, in_channels=1,
    ...             image_size=8).__class__.__name__
    'DemoCNN'
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from sconce.errors import ModelError, UnknownNameError

ModelFactory = Callable[..., nn.Module]
"""Builds an untrained model from keyword arguments (``num_classes``, ``in_channels``, ...)."""


def _call_factory(factory: Callable[..., Any], spec: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        parameters: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
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


def resolve_factory(spec: str, registered: Mapping[str, Callable[..., Any]]
                    ) -> Callable[..., Any]:
    """The callable a spec names: ``pkg.module:attr``, ``file.py:attr``, or a name in
    ``registered``.

    Example:
        >>> resolve_factory("torch.nn:Identity", {}).__name__
        'Identity'
    """
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
        found: object = getattr(module, attribute, None)
        if found is None:
            raise ModelError(f"{where!r} has no attribute {attribute!r}")
        if not callable(found):
            raise ModelError(f"{spec!r} is not a class or function")
        return found
    if spec in registered:
        return registered[spec]
    raise UnknownNameError(
        "model", spec, registered,
        "or give pkg.module:factory, file.py:ClassName, or a folder saved by sconce",
    )


def build_model(spec: str, registered: Mapping[str, Callable[..., Any]], **kwargs: Any
                ) -> nn.Module:
    """Build the model that ``spec`` names (see the module docstring).

    Raises:
        ModelError: a spec that cannot be imported, called, or does not give an nn.Module.
        UnknownNameError: a name that is not in ``registered``.
    """
    if Path(spec).suffix in (".pt", ".pth", ".pt2") and ":" not in spec:
        raise ModelError(
            f"{spec!r} is a bare weights file; give the folder sconce saved (with model.json), "
            "or pkg.module:factory / file.py:ClassName for the architecture"
        )
    return _call_factory(resolve_factory(spec, registered), spec, kwargs)
