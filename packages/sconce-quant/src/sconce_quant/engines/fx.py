"""The torch.ao FX engine: x86 (fbgemm/oneDNN) int8 kernels through ``prepare_fx``/``convert_fx``.

Compared with the stock x86 recipe, this engine calibrates with sconce's estimators, runs
``nn.Flatten`` on int8 tensors (the stock recipe leaves a dequantize/quantize pair around it
before every classifier), and keeps a submodule whose code FX cannot trace in float instead
of failing. torch.ao's eager/FX quantization is deprecated upstream; this engine is
unavailable, and ``engine="auto"`` skips it, once torch stops shipping it.

Example:
    >>> engine = FxEngine()
    >>> engine.unavailable() is None or isinstance(engine.unavailable(), str)
    True
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn

from sconce_quant.engines.base import (
    Built,
    EngineError,
    StaticSettings,
    as_args,
    input_spec,
    inputs_from_spec,
)
from sconce_quant.engines.observer import estimator_observer

logger = logging.getLogger(__name__)

_SHAPE_OPS = {"size", "dim", "view", "reshape", "flatten", "contiguous", "permute", "transpose",
              "unsqueeze", "squeeze", "to", "type", "float", "getitem", "getattr", "chunk",
              "split", "expand", "repeat"}


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation warnings: the engine's report says which engine ran."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class FxEngine:
    """torch.ao FX static int8 with the x86 backend (fbgemm / oneDNN kernels).

    Example:
        >>> FxEngine().name
        'fx'
    """

    name = "fx"
    description = "torch.ao FX, x86 int8 kernels (fbgemm/oneDNN)"

    def unavailable(self) -> str | None:
        try:
            with _quiet():
                import torch.ao.quantization.backend_config.utils
                from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
        except ImportError as exc:
            return f"torch.ao.quantization FX is not available in this torch ({exc})"
        if "x86" not in torch.backends.quantized.supported_engines:
            return "this torch build has no x86 quantized engine"
        return None

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: StaticSettings
                ) -> FxPrepared:
        if not batches:
            raise EngineError("no calibration batches")
        example = as_args(batches[0])
        if any(isinstance(t, torch.Tensor) and not t.is_floating_point() for t in example):
            raise EngineError("torch.ao FX quantizes every model input, and this model takes "
                              "integer inputs (token ids, masks); use the onnxruntime engine")
        leaves = untraceable_modules(model, example)
        return FxPrepared(model, list(batches), settings, leaves, input_spec(batches[0]))

    def restore(self, model: nn.Module, record: dict[str, Any], settings: StaticSettings
                ) -> nn.Module:
        example = inputs_from_spec(record["inputs"])
        with _quiet():
            prepared = _prepare(model.eval(), settings, record.get("skip", []),
                                record.get("leaves", []), example)
            return _convert(prepared)


class FxPrepared:
    """A float model checked for tracing, ready to be quantized with some layers in float.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
        >>> prepared = FxEngine().prepare(model, [torch.randn(8, 4)], StaticSettings())
        >>> type(prepared.build().module.get_submodule("0")).__name__
        'LinearReLU'
    """

    def __init__(self, model: nn.Module, batches: list[Any], settings: StaticSettings,
                 leaves: list[str], spec: list[dict[str, Any]]) -> None:
        self.model = model
        self.batches = batches
        self.settings = settings
        self.leaves = leaves
        self.spec = spec

    def build(self, skip: Collection[str] = ()) -> Built:
        skip = sorted(skip)
        with _quiet():
            prepared = _prepare(copy.deepcopy(self.model).eval(), self.settings, skip,
                                self.leaves, as_args(self.batches[0]))
            with torch.no_grad():
                for batch in self.batches:
                    prepared(*as_args(batch))
            quantized = _convert(prepared)
        record = {"skip": skip, "leaves": self.leaves, "inputs": self.spec}
        float_ops = [f"{name} (not traceable by FX)" for name in self.leaves]
        float_ops += [op for op in float_operators(quantized) if op not in self.leaves]
        return Built(quantized, record, float_ops=float_ops, float_layers=skip)


def qconfig_mapping(settings: StaticSettings, skip: Collection[str] = ()) -> Any:
    """The x86 QConfigMapping with sconce's activation observer and per-channel weights.

    Example:
        >>> mapping = qconfig_mapping(StaticSettings(), skip=["fc"])
        >>> mapping.module_name_qconfigs["fc"] is None
        True
    """
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import (
        HistogramObserver,
        MinMaxObserver,
        PerChannelMinMaxObserver,
        UniformQuantizationObserverBase,
    )

    observer: Any = estimator_observer(UniformQuantizationObserverBase)
    activation = observer.with_args(method=settings.calibration, percentile=settings.percentile,
                                    dtype=torch.quint8, reduce_range=settings.reduce_range)
    if settings.per_channel:
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                    qscheme=torch.per_channel_symmetric)
    else:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    with _quiet():
        mapping = get_default_qconfig_mapping("x86")
    qconfig_global = QConfig(activation=activation,  # type: ignore[no-untyped-call]  # untyped in torch
                             weight=weight)
    mapping.set_global(qconfig_global)
    for key, qconfig in list(mapping.object_type_qconfigs.items()):
        constructor = getattr(qconfig.activation, "p", None) if qconfig is not None else None
        if qconfig is not None and getattr(constructor, "func", None) is HistogramObserver:
            replaced = QConfig(activation=activation,  # type: ignore[no-untyped-call]  # untyped in torch
                               weight=qconfig.weight)
            mapping.set_object_type(key, replaced)
    for name in skip:
        mapping.set_module_name(name, None)
    return mapping


def backend_config() -> Any:
    """The x86 backend config (fbgemm / oneDNN kernels).

    Example:
        >>> backend_config().name
        'x86'
    """
    import torch.ao.quantization.backend_config.utils  # noqa: F401  (x86 config needs it)
    from torch.ao.quantization.backend_config.x86 import get_x86_backend_config

    return get_x86_backend_config()


class _TracedFlatten(nn.Module):
    """``nn.Flatten`` as FX traces it: the ``torch.flatten`` call inside, which the x86
    backend runs on int8 tensors (a leaf ``nn.Flatten`` gets a dequantize/quantize pair)."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)


def _unleaf_flatten(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Flatten`` (no weights) for :class:`_TracedFlatten`, in place."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Flatten:
                setattr(parent, child_name, _TracedFlatten(child.start_dim, child.end_dim))
    return model


def _prepare(model: nn.Module, settings: StaticSettings, skip: Collection[str],
             leaves: Collection[str], example: tuple[Any, ...]) -> fx.GraphModule:
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import prepare_fx

    custom = PrepareCustomConfig().set_non_traceable_module_names(list(leaves))
    try:
        return prepare_fx(_unleaf_flatten(model), qconfig_mapping(settings, skip), example,
                          prepare_custom_config=custom, backend_config=backend_config())
    except Exception as exc:  # tracing failures come in every exception type
        raise EngineError(f"torch.ao FX cannot prepare this model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _convert(prepared: fx.GraphModule) -> fx.GraphModule:
    from torch.ao.quantization.quantize_fx import convert_fx

    return convert_fx(prepared, backend_config=backend_config())


def untraceable_modules(model: nn.Module, example: tuple[Any, ...]) -> list[str]:
    """Submodules whose own code FX cannot trace (they will run in float, as black boxes).

    Raises:
        EngineError: the model's own ``forward`` cannot be traced.

    Example:
        >>> class Branchy(nn.Module):
        ...     def forward(self, x):
        ...         return x if x.sum() > 0 else -x
        >>> model = nn.Sequential(nn.Linear(2, 2), Branchy())
        >>> untraceable_modules(model, (torch.randn(1, 2),))
        ['1']
    """
    tracer = _ProbeTracer()
    try:
        tracer.trace(model)
    except Exception as exc:  # any tracing failure of the top level
        raise EngineError(f"torch.ao FX cannot trace the model's forward: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return tracer.failed


class _ProbeTracer(fx.Tracer):
    """A tracer that records submodules whose tracing fails and keeps them as leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[str] = []

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:  # this submodule cannot be traced: keep it whole, in float
            self.failed.append(name)
            return self.create_proxy("call_module", name, args, kwargs)


def float_operators(graph_module: fx.GraphModule) -> list[str]:
    """Operators of a converted model that compute on float tensors (not in int8).

    Tensors are followed from the inputs: ``quantize_*`` makes them int8, ``dequantize`` float,
    quantized modules int8; other operators keep their inputs' kind. Compute operators whose
    tensor inputs are all float are reported; shape-only operators are not.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Softplus()).eval()
        >>> FxEngine().prepare(model, [torch.randn(8, 4)], StaticSettings()).build().float_ops
        ['1']
    """
    modules = dict(graph_module.named_modules())
    quantized: dict[fx.Node, bool] = {}
    found: list[str] = []
    for node in graph_module.graph.nodes:
        inputs = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        any_int8 = any(quantized.get(arg, False) for arg in inputs)
        target_name = getattr(node.target, "__name__", str(node.target))
        if node.op in ("placeholder", "get_attr", "output"):
            quantized[node] = False
        elif target_name in ("quantize_per_tensor", "quantize_per_channel",
                             "quantize_per_tensor_dynamic"):
            quantized[node] = True
        elif target_name == "dequantize":
            quantized[node] = False
        elif node.op == "call_module":
            module = modules[str(node.target)]
            is_int8 = type(module).__module__.startswith(("torch.ao.nn.quantized",
                                                          "torch.ao.nn.intrinsic.quantized"))
            quantized[node] = is_int8 or any_int8
            if not quantized[node] and inputs and not isinstance(module, (nn.Identity,
                                                                          nn.Dropout)):
                found.append(str(node.target))
        else:
            quantized[node] = any_int8
            if not any_int8 and inputs and target_name not in _SHAPE_OPS:
                found.append(f"{node.name} ({target_name})")
    return found
