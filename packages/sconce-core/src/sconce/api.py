"""The public entry points that look names up in the plugin registry.

The layers below this module receive what they need from the registry (a dataset, an
adapter, the footprint hook, the installed techniques) as arguments; the functions here look
those up and pass them down, so a user can write ``sconce.train(model, "digits")``.

Example:
    >>> [t.name for t in list_techniques("nothing.*")]
    []
    >>> get_data("digits").num_classes  # doctest: +SKIP
    10
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sconce.adapter import ClassifierAdapter, ModelAdapter
from sconce.context import Context
from sconce.data import Data
from sconce.errors import DataError, ModelError
from sconce.footprint import Footprint
from sconce.footprint import model_footprint as count_footprint
from sconce.metrics.base import Metric
from sconce.metrics.measure import compare_with_context, measure_with_context
from sconce.metrics.timing import TimingSettings
from sconce.modelspec import build_model as build_from_spec
from sconce.plugins import plugin_infos, plugin_manager, registry
from sconce.runtime import resolve_device
from sconce.serialization import load_saved
from sconce.technique import TechniqueInfo, TechniqueProtocol, technique_info
from sconce.train import TrainResult, fit

__all__ = [
    "build_model", "get_adapter", "get_data", "get_technique", "list_techniques", "load",
    "measure", "model_footprint", "resolve_metrics", "train",
]


def list_techniques(pattern: str = "*") -> list[TechniqueInfo]:
    """Installed techniques whose name matches the glob ``pattern``, sorted by name.

    Example:
        >>> [(t.name, t.package) for t in list_techniques("prune.*")][:1]  # doctest: +SKIP
        [('prune.channel', 'sconce-prune')]
    """
    reg = registry()
    distributions = {info.name: info.distribution for info in plugin_infos()}
    infos = []
    for name in sorted(reg.techniques):
        if fnmatch.fnmatch(name, pattern):
            plugin = reg.origin[("techniques", name)]
            infos.append(technique_info(reg.techniques[name], plugin=plugin,
                                        package=distributions.get(plugin, plugin)))
    return infos


def get_technique(name: str) -> TechniqueProtocol:
    """The technique registered as ``name``; an unknown name lists the close matches.

    Example:
        >>> get_technique("prune.gmq")  # doctest: +SKIP
        Traceback (most recent call last):
        sconce.errors.UnknownNameError: unknown technique 'prune.gmq'; did you mean 'prune.gmp'?
    """
    technique: TechniqueProtocol = registry().lookup("techniques", name, "see `sconce techniques`")
    return technique


def get_adapter(model: nn.Module, adapter: ModelAdapter | None = None) -> ModelAdapter:
    """The adapter for ``model``: the one given, else a plugin's, else a classifier.

    Example:
        >>> isinstance(get_adapter(nn.Linear(2, 2)), ClassifierAdapter)
        True
    """
    if adapter is not None:
        return adapter
    answer = plugin_manager().hook.sconce_model_adapter(model=model)
    return answer if answer is not None else ClassifierAdapter()


def get_data(value: Data | Mapping[str, Any] | str, **options: Any) -> Data:
    """A :class:`sconce.Data` from a Data, a dict of loaders, or a registered dataset name.

    ``options`` go to the dataset's factory when ``value`` is a name (``batch_size=...``).

    Example:
        >>> get_data("fashion-mnist", batch_size=128).input_shape  # doctest: +SKIP
        (1, 28, 28)
    """
    if not isinstance(value, str):
        return Data.from_value(value)
    factory = registry().lookup("datasets", value, "see `sconce datasets`")
    data = factory(**options)
    if not isinstance(data, Data):
        raise DataError(f"dataset factory {value!r} returned {type(data).__name__}, "
                        "not sconce.Data")
    return data


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build the model a spec names: a registered name, ``pkg.module:factory`` or
    ``file.py:Name`` (see :mod:`sconce.modelspec`).

    Example:
        >>> type(build_model("demo-cnn", num_classes=10, in_channels=1, image_size=8)).__name__
        'DemoCNN'
    """
    return build_from_spec(spec, registry().models, **kwargs)


def model_footprint(model: nn.Module) -> Footprint:
    """The true storage of ``model``: plugins answer for the modules they pack.

    Example:
        >>> model_footprint(nn.Linear(100, 10)).nbytes
        4040
    """
    return count_footprint(model, _module_footprint)


def _module_footprint(module: nn.Module) -> Footprint | None:
    answer: Footprint | None = plugin_manager().hook.sconce_module_footprint(module=module)
    return answer


def context(data: Data | None = None, *, adapter: ModelAdapter, **fields: Any) -> Context:
    """A :class:`sconce.Context` whose footprints consult the plugins.

    Example:
        >>> context(adapter=ClassifierAdapter(), inputs=torch.zeros(1, 2)).footprint(
        ...     nn.Linear(2, 2)).params
        6
    """
    return Context(data=data, adapter=adapter, module_footprint=_module_footprint, **fields)


def resolve_metrics(names: Sequence[str | Metric] | None, *, have_data: bool,
                    task: str = "classification") -> list[Metric]:
    """Metric objects for ``names`` (registered names or objects); None means the defaults
    that apply: those needing data only ``have_data``, those with ``tasks`` only for ``task``
    (the adapter's :attr:`~sconce.adapter.ModelAdapter.task`).

    Example:
        >>> [m.name for m in resolve_metrics(["params"], have_data=False)]
        ['params']
        >>> "perplexity" in [m.name for m in resolve_metrics(None, have_data=True)]
        False
    """
    table = registry().metrics
    if names is None:
        chosen = [m for m in table.values() if getattr(m, "default", True)
                  and task in (getattr(m, "tasks", None) or (task,))]
        return [m for m in chosen if have_data or not getattr(m, "needs_data", False)]
    return [n if not isinstance(n, str) else registry().lookup("metrics", n) for n in names]


def measure(
    model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data: Data | Mapping[str, Any] | str | None = None,
    example_inputs: Any = None,
    metrics: Sequence[str | Metric] | None = None,
    *,
    device: str | torch.device = "cpu",
    adapter: ModelAdapter | None = None,
    timing: TimingSettings | None = None,
) -> Any:
    """Measure a model, or compare several: ``{metric name: value}`` (None where not
    measurable; metrics that do not apply to this kind of model are left out) for one model;
    a list (or a dict by name) of them for several.

    Several models are compared the way ``compress`` compares its stages: latency is timed
    for all of them together, interleaved round by round, so load on the machine lands on
    every one alike (:func:`sconce.metrics.timing.time_interleaved`); the other metrics are
    measured one model at a time.

    Args:
        model: one model, a sequence of models, or ``{name: model}``; measured as is (in
            eval mode; modes are restored).
        data: labelled data for accuracy; without it only model-only metrics run.
        example_inputs: one input batch, when there is no data.
        metrics: names or Metric objects; default: every default metric that applies.
        device: where to run ("cpu" by default, so numbers are comparable).
        adapter: how to run the model(s).
        timing: latency settings (threads, rounds, throughput batch).

    Example:
        >>> values = measure(nn.Linear(100, 10), example_inputs=torch.randn(1, 100),
        ...                  metrics=["params", "size", "macs"])
        >>> values["params"], values["size"] * 2**20, values["macs"]
        (1010.0, 4040.0, 1000.0)
        >>> both = measure({"big": nn.Linear(100, 10), "small": nn.Linear(100, 2)},
        ...                example_inputs=torch.randn(1, 100), metrics=["params"])
        >>> both["small"]["params"]
        202.0
    """
    resolved = get_data(data) if data is not None else None
    if resolved is None and example_inputs is None:
        raise DataError("measure() needs data= or example_inputs=")
    named = dict(model) if isinstance(model, Mapping) else None
    given: list[object] = list(named.values()) if named is not None else (
        [model] if isinstance(model, nn.Module) else list(model))
    models = [m for m in given if isinstance(m, nn.Module)]
    if not models or len(models) != len(given):
        raise ModelError("measure() needs an nn.Module, or a list or dict of them")
    ctx = context(resolved, adapter=get_adapter(models[0], adapter),
                  device=resolve_device(device), inputs=example_inputs,
                  timing=timing or TimingSettings(), progress=False)
    chosen = resolve_metrics(metrics, have_data=resolved is not None, task=ctx.adapter.task)
    results = [measure_with_context(m, ctx, chosen, compared=False).values for m in models]
    compared = compare_with_context(models, ctx, chosen)
    for values, timed in zip(results, compared, strict=True):
        values.update(timed.values)
    if named is not None:
        return dict(zip(named, results, strict=True))
    return results[0] if isinstance(model, nn.Module) else results


def train(model: nn.Module, data: Data | Mapping[str, Any] | str | DataLoader[Any],
          epochs: float = 1, *, adapter: ModelAdapter | None = None, **options: Any
          ) -> TrainResult:
    """Train ``model`` in place: the loop fine-tuning uses (:func:`sconce.train.fit`).

    ``data`` may be a registered dataset name; the model's adapter comes from the plugins
    unless given. ``options`` are :func:`sconce.train.fit`'s (``lr``, ``teacher``,
    ``callbacks``, ``device``, ``seed``, ``checkpoint_dir``, ...).

    Example:
        >>> train(model, "fashion-mnist", epochs=3)  # doctest: +SKIP
        TrainResult(model=VGG(...), history=[...], steps=1266)
    """
    resolved = data if isinstance(data, DataLoader) else get_data(data)
    return fit(model, resolved, epochs, adapter=get_adapter(model, adapter), **options)


def load(folder: str | Path, model: nn.Module | None = None, *,
         map_location: str | torch.device = "cpu", trust_code: bool = False) -> nn.Module:
    """Load a model saved by sconce, in eval mode, without unpickling or running code.

    The folder is data: the architecture comes from a registered model name (or ``model``)
    and the techniques' restore records. A folder whose ``model.json`` names code
    (``pkg.module:factory``, ``file.py:Name``) is refused unless ``trust_code=True``, like
    ``trust_remote_code`` in transformers (see ``SECURITY.md``).

    Args:
        folder: the folder ``result.save()`` or ``sconce compress`` wrote.
        model: a fresh instance of the original architecture (copied, never modified);
            without it the spec the folder records, else its exported program, is used.
        map_location: device for the weights.
        trust_code: import and call the code the folder's spec names; only for folders
            whose source you trust like your own code.

    Raises:
        ModelError: the folder is not a sconce model, the architecture cannot be rebuilt,
            or it names code and ``trust_code`` is False.

    Example:
        >>> model = load("out/")  # doctest: +SKIP
        >>> model(torch.randn(7, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([7, 10])
    """
    reg = registry()
    return load_saved(folder, model, techniques=reg.techniques, models=reg.models,
                      map_location=map_location, trust_code=trust_code)
