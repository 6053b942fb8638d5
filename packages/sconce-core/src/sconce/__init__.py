"""sconce: compress a PyTorch model end to end and prove the gains with measured numbers.

Example:
    >>> import sconce
    >>> model = sconce.models.demo_cnn(in_channels=1, image_size=8)
    >>> result = sconce.compress(model, "digits", finetune_epochs=1)  # doctest: +SKIP
    >>> result.save("out/")  # doctest: +SKIP
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "ChannelwiseLayer", "ClassifierAdapter", "CompressOptions", "CompressionResult", "Config",
    "ConfigError", "Constraints", "Context", "Data", "DataError", "Footprint", "Metric",
    "MetricNotApplicable", "MetricUnavailable", "ModelAdapter", "ModelError", "PluginError",
    "PruneConfig", "QuantizeConfig", "Recipe", "Report", "SconceError", "Stage", "StageResult",
    "Technique", "TechniqueError", "TechniqueInfo", "TechniqueProtocol", "TimingSettings",
    "TrainCallback", "TrainResult", "TrainState", "UnknownNameError", "__version__", "compress",
    "get_adapter", "get_data", "get_technique", "hookimpl", "hookspec", "list_techniques", "load",
    "load_plugins", "measure", "model_footprint", "models", "plugin_infos", "register_plugin",
    "sconce", "train", "unregister_plugin",
]
