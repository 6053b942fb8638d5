"""sconce: compress a PyTorch model end to end and prove the gains with measured numbers.

Example:
    >>> import sconce
    >>> model = sconce.models.demo_cnn(in_channels=1, image_size=8)
    >>> result = sconce.compress(model, "digits", finetune_epochs=1)  # doctest: +SKIP
    >>> result.save("out/")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from sconce.progress import track
from sconce.verbosity import disable_default_handler, install_default_handler, set_verbosity

if TYPE_CHECKING:
    from sconce import models
    from sconce.adapter import ClassifierAdapter, ModelAdapter
    from sconce.api import (
        get_adapter,
        get_data,
        get_technique,
        list_techniques,
        load,
        measure,
        model_footprint,
        train,
    )
    from sconce.config import Config, PruneConfig, QuantizeConfig
    from sconce.context import Context
    from sconce.data import Data
    from sconce.errors import (
        ConfigError,
        DataError,
        ModelError,
        PluginError,
        SconceError,
        TechniqueError,
        UnknownNameError,
    )
    from sconce.footprint import Footprint
    from sconce.hookspecs import hookimpl, hookspec
    from sconce.layers import ChannelwiseLayer
    from sconce.legacy import sconce
    from sconce.metrics import Metric, MetricNotApplicable, MetricUnavailable, TimingSettings
    from sconce.options import CompressOptions
    from sconce.pipeline import CompressionResult, compress
    from sconce.plugins import load_plugins, plugin_infos, register_plugin, unregister_plugin
    from sconce.recipe import Constraints, Recipe, Stage
    from sconce.report import Report, StageResult
    from sconce.technique import Technique, TechniqueInfo, TechniqueProtocol
    from sconce.train import TrainCallback, TrainResult, TrainState

# Public names load their module on first use, so `sconce --help` and `import sconce` do not
# import torch; `sconce.compress` imports it when first touched.
_LAZY = {
    "ChannelwiseLayer": "sconce.layers",
    "ClassifierAdapter": "sconce.adapter",
    "CompressOptions": "sconce.options",
    "CompressionResult": "sconce.pipeline",
    "Config": "sconce.config",
    "ConfigError": "sconce.errors",
    "Constraints": "sconce.recipe",
    "Context": "sconce.context",
    "Data": "sconce.data",
    "DataError": "sconce.errors",
    "Footprint": "sconce.footprint",
    "Metric": "sconce.metrics",
    "MetricNotApplicable": "sconce.metrics",
    "MetricUnavailable": "sconce.metrics",
    "ModelAdapter": "sconce.adapter",
    "ModelError": "sconce.errors",
    "PluginError": "sconce.errors",
    "PruneConfig": "sconce.config",
    "QuantizeConfig": "sconce.config",
    "Recipe": "sconce.recipe",
    "Report": "sconce.report",
    "SconceError": "sconce.errors",
    "Stage": "sconce.recipe",
    "StageResult": "sconce.report",
    "Technique": "sconce.technique",
    "TechniqueError": "sconce.errors",
    "TechniqueInfo": "sconce.technique",
    "TechniqueProtocol": "sconce.technique",
    "TimingSettings": "sconce.metrics",
    "TrainCallback": "sconce.train",
    "TrainResult": "sconce.train",
    "TrainState": "sconce.train",
    "UnknownNameError": "sconce.errors",
    "compress": "sconce.pipeline",
    "get_adapter": "sconce.api",
    "get_data": "sconce.api",
    "get_technique": "sconce.api",
    "hookimpl": "sconce.hookspecs",
    "hookspec": "sconce.hookspecs",
    "list_techniques": "sconce.api",
    "load": "sconce.api",
    "load_plugins": "sconce.plugins",
    "measure": "sconce.api",
    "model_footprint": "sconce.api",
    "models": "sconce.models",
    "plugin_infos": "sconce.plugins",
    "register_plugin": "sconce.plugins",
    "sconce": "sconce.legacy",
    "train": "sconce.api",
    "unregister_plugin": "sconce.plugins",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sconce' has no attribute {name!r}")
    value = importlib.import_module(module)
    if module != f"sconce.{name}":
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``sconce.train`` is the function, as before imports became lazy: importing the
    submodule of the same name (the loop) must not replace it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


install_default_handler()

__version__ = "0.1.0"

__all__ = [
    "ChannelwiseLayer",
    "ClassifierAdapter",
    "CompressOptions",
    "CompressionResult",
    "Config",
    "ConfigError",
    "Constraints",
    "Context",
    "Data",
    "DataError",
    "Footprint",
    "Metric",
    "MetricNotApplicable",
    "MetricUnavailable",
    "ModelAdapter",
    "ModelError",
    "PluginError",
    "PruneConfig",
    "QuantizeConfig",
    "Recipe",
    "Report",
    "SconceError",
    "Stage",
    "StageResult",
    "Technique",
    "TechniqueError",
    "TechniqueInfo",
    "TechniqueProtocol",
    "TimingSettings",
    "TrainCallback",
    "TrainResult",
    "TrainState",
    "UnknownNameError",
    "__version__",
    "compress",
    "disable_default_handler",
    "get_adapter",
    "get_data",
    "get_technique",
    "hookimpl",
    "hookspec",
    "list_techniques",
    "load",
    "load_plugins",
    "measure",
    "model_footprint",
    "models",
    "plugin_infos",
    "register_plugin",
    "sconce",
    "set_verbosity",
    "track",
    "train",
    "unregister_plugin",
]
