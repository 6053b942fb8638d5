"""The PT2E engine: torchao's ``X86InductorQuantizer``, compiled by inductor into oneDNN int8.

PyTorch's maintained quantization path: the float model is captured with ``torch.export``
(batch dimension dynamic, and every dimension of integer inputs such as token ids),
annotated by torchao's ``X86InductorQuantizer`` (static: uint8 activations calibrated with
sconce's :class:`~sconce_quant.calibration.RangeEstimator`, per-channel symmetric int8
weights; dynamic: int8 weights, activations quantized at run time), converted to a
quantize/dequantize graph, and compiled by ``torch.compile`` (inductor, freezing on), whose
lowering turns the quantized patterns into oneDNN int8 convolutions and matmuls with their
post-operators fused, and generates C++ for what stays float (normalizations, softmax,
GELU). The engine exists for as long as torch.ao's eager/FX flow does not: it needs only
torch and torchao.

Compilation happens on first use, once per input shape (the graph is specialized to it:
inductor's int8 convolutions do not compile with a symbolic batch size) and thread count
(the generated code fixes its OpenMP threads); inductor's FX graph cache keeps compiled
graphs on disk, so compiling the same graph again is faster. The report quotes the time.

Saved models keep the int8 weights and their scales in the state dict; the activation
scales and zero points, which the converted graph holds as constants, go to the restore
record, and :meth:`Pt2eEngine.restore` repeats export, annotation and conversion on a fresh
float model with those qparams preset.

Example:
    >>> engine = Pt2eEngine()
    >>> engine.unavailable() is None or isinstance(engine.unavailable(), str)
    True
"""

from __future__ import annotations

import copy
import logging
import platform
import shutil
import time
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

# operators inductor's x86 lowering runs on int8 inputs (oneDNN convolutions and matmuls,
# int8 pooling and concatenation)
_INT8_OPS = {"conv1d", "conv2d", "conv3d", "linear", "addmm", "mm", "bmm", "matmul",
             "max_pool2d", "adaptive_avg_pool2d", "avg_pool2d", "cat"}
# inductor fuses these into the int8 operator that produces their input
_FUSED_POST_OPS = {"relu", "relu_", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "silu",
                   "silu_", "gelu", "leaky_relu", "tanh", "sigmoid", "add", "add_"}
# operators that only move or reshape data: never reported as left in float
_DATA_OPS = {"view", "reshape", "flatten", "permute", "transpose", "t", "contiguous", "clone",
             "unsqueeze", "squeeze", "expand", "slice", "select", "cat", "split", "chunk",
             "getitem", "sym_size", "_assert_tensor_metadata", "to", "_to_copy", "dropout",
             "alias", "detach", "unflatten", "max_pool2d", "adaptive_avg_pool2d", "avg_pool2d",
             "embedding", "type_as", "full", "zeros", "ones", "arange", "scalar_tensor"}
_QDQ = ("quantize_per_tensor", "quantize_per_channel", "dequantize_per_tensor",
        "dequantize_per_channel", "choose_qparams")


@contextmanager
def quiet() -> Iterator[None]:
    """Silence torchao's import chatter and the flows' warnings; the report names the engine.

    Example:
        >>> with quiet():
        ...     pass
    """
    noisy = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree",
                                                  "torch._dynamo", "torch._inductor")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(noisy, levels, strict=True):
            log.setLevel(level)


class Pt2eEngine:
    """torchao PT2E with ``X86InductorQuantizer``, compiled by inductor (oneDNN int8 kernels).

    Args:
        dynamic: quantize Linear activations at run time instead of calibrating them.

    Example:
        >>> Pt2eEngine().name, Pt2eEngine(dynamic=True).name
        ('pt2e', 'pt2e')
    """

    name = "pt2e"

    def __init__(self, dynamic: bool = False) -> None:
        self.dynamic = dynamic
        kind = "dynamic int8" if dynamic else "int8"
        self.description = (f"torchao PT2E X86InductorQuantizer {kind}, inductor-compiled "
                            "(oneDNN)")

    def unavailable(self) -> str | None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
            return f"X86InductorQuantizer targets x86 CPUs, this is {platform.machine()}"
        try:
            with quiet():
                from torchao.quantization.pt2e.quantize_pt2e import (  # noqa: F401
                    convert_pt2e,
                    prepare_pt2e,
                )
                from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (  # noqa: F401
                    X86InductorQuantizer,
                )
        except ImportError as exc:
            return f"torchao is not installed ({exc}); pip install 'sconce-quant[pt2e]'"
        compiler = _cxx_compiler()
        if compiler is None:
            return "inductor needs a C++ compiler (g++ or clang++) on the PATH"
        return None

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: StaticSettings | None
                ) -> Pt2ePrepared:
        if not batches:
            raise EngineError("no calibration batches")
        settings = settings or StaticSettings()
        exported = export_graph(model, as_args(batches[0]))
        return Pt2ePrepared(exported, list(batches), settings, self.dynamic,
                            input_spec(batches[0]))

    def restore(self, model: nn.Module, record: dict[str, Any],
                settings: StaticSettings | None) -> nn.Module:
        settings = settings or StaticSettings()
        example = inputs_from_spec(record["inputs"])
        exported = export_graph(model.eval(), example)
        presets = {name: (float(scale), int(zero))
                   for name, (scale, zero) in record.get("activations", {}).items()}
        # one pass on placeholder inputs shows the weights to their observers (the state dict
        # then brings the saved int8 weights); activation observers keep their presets
        converted = _convert(exported, settings, self.dynamic, record.get("skip", []),
                             [example], presets=presets)
        return Pt2eModule(converted)


class Pt2ePrepared:
    """An exported float model, ready to be annotated, calibrated and converted.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
        >>> prepared = Pt2eEngine().prepare(model, [torch.randn(8, 4)], StaticSettings())
        >>> isinstance(prepared.build().module, Pt2eModule)
        True
    """

    def __init__(self, exported: fx.GraphModule, batches: list[Any], settings: StaticSettings,
                 dynamic: bool, spec: list[dict[str, Any]]) -> None:
        self.exported = exported
        self.batches = batches
        self.settings = settings
        self.dynamic = dynamic
        self.spec = spec

    def build(self, skip: Collection[str] = ()) -> Built:
        skip = sorted(skip)
        activations: dict[str, tuple[float, int]] = {}
        converted = _convert(self.exported, self.settings, self.dynamic, skip, self.batches,
                             record=activations)
        record = {"skip": skip, "inputs": self.spec, "dynamic": self.dynamic,
                  "activations": {name: list(qparams) for name, qparams in activations.items()}}
        return Built(Pt2eModule(converted), record, float_ops=float_operators(converted),
                     float_layers=skip)


class Pt2eModule(nn.Module):
    """A PT2E-converted int8 graph, compiled by inductor on first use for each input shape.

    The state dict holds the int8 weights, their scales and zero points and the float
    parameters that stay (biases, normalizations); it loads with ``weights_only=True``.
    ``compile_seconds`` records how long each compilation took.

    Args:
        graph: the converted graph (``convert_pt2e``'s output).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
        >>> module = Pt2eEngine().prepare(model, [torch.randn(8, 4)], StaticSettings()).build()
        >>> module.module(torch.randn(2, 4)).shape  # doctest: +SKIP
        torch.Size([2, 4])
    """

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph
        self._compiled: dict[int, Any] = {}
        self.compile_seconds: list[float] = []
        self._shapes: dict[int, set[tuple[Any, ...]]] = {}

    def forward(self, *inputs: Any) -> Any:
        threads = torch.get_num_threads()
        compiled = self._compiled.get(threads)
        if compiled is None:
            compiled = self._compiled[threads] = _compile(copy.deepcopy(self.graph_module))
            self._shapes[threads] = set()
        key = tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t
                    for t in inputs)
        new = key not in self._shapes[threads]
        started = time.perf_counter()
        # always in inference mode: the compiled code is guarded on the grad mode, so a caller
        # switching between no_grad and inference_mode would otherwise compile it again
        with torch.inference_mode(), _inductor_settings(), quiet() if new else _nothing():
            out = compiled(*inputs)
        if new:
            self._shapes[threads].add(key)
            self.compile_seconds.append(time.perf_counter() - started)
            logger.info("inductor compiled the int8 graph for inputs %s in %.1f s", key,
                        self.compile_seconds[-1])
        return out

    def train(self, mode: bool = True) -> Pt2eModule:
        """Set the flag only: the converted graph is an inference graph and stays in eval
        mode (its dropouts and batch norms are the exported eval versions)."""
        self.training = mode
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._compiled.clear()  # frozen constants were folded from the old weights

    def _apply(self, fn: Any, recurse: bool = True) -> Pt2eModule:
        self._compiled.clear()
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch leaves it untyped
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = {}  # compiled code cannot be copied; a copy compiles its own
        state["_shapes"] = {}
        return state

    def extra_repr(self) -> str:
        return f"compiled for {sum(len(s) for s in self._shapes.values())} input shape(s)"


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _cxx_compiler() -> str | None:
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _compile(graph: fx.GraphModule) -> Any:
    """The graph compiled by inductor, for static shapes (compiled on the first call)."""
    return torch.compile(graph, dynamic=False)


@contextmanager
def _inductor_settings() -> Iterator[None]:
    """inductor's settings while the int8 graph runs (and compiles): freezing, so weights
    become constants and the int8 patterns lower to oneDNN kernels with prepacked weights;
    the FX graph cache, so compiling a graph compiled before is quicker."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True, fx_graph_cache=True):
        yield


def export_graph(model: nn.Module, args: tuple[Any, ...]) -> fx.GraphModule:
    """``torch.export`` the float model for the PT2E flow: batch dimension dynamic, every
    dimension of integer inputs (token ids, masks) too. Computations whose results the model
    never returns (a Hugging Face pooler under a mean-pooling head) are dropped: they cost
    time, and torchao's quantizer fails on an operator nobody reads.

    Raises:
        EngineError: ``torch.export`` cannot capture the model.

    Example:
        >>> graph = export_graph(nn.Linear(3, 2).eval(), (torch.randn(4, 3),))
        >>> graph(torch.randn(7, 3)).shape
        torch.Size([7, 2])
    """
    auto = torch.export.Dim.AUTO
    shapes = tuple({d: auto for d in (range(t.dim()) if not t.is_floating_point() else [0])}
                   if isinstance(t, torch.Tensor) and t.dim() else None for t in args)
    try:
        with quiet():
            program = torch.export.export(model.eval(), args, dynamic_shapes=shapes,
                                          strict=False)
    except Exception as exc:  # export fails in many exception types
        raise EngineError(f"torch.export cannot capture this model: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}") from None
    graph = program.module()
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def quantizer(settings: StaticSettings, dynamic: bool, skip: Collection[str]) -> Any:
    """The ``X86InductorQuantizer`` with sconce's activation observer and weight layout.

    Example:
        >>> q = quantizer(StaticSettings(), dynamic=False, skip=["fc"])
        >>> q.module_name_qconfig["fc"] is None
        True
    """
    with quiet():
        from torchao.quantization.pt2e.observer import (
            MinMaxObserver,
            PerChannelMinMaxObserver,
            PlaceholderObserver,
            UniformQuantizationObserverBase,
        )
        from torchao.quantization.pt2e.quantizer import QuantizationSpec
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            QuantizationConfig,
            X86InductorQuantizer,
        )
    quant_max = 127 if settings.reduce_range else 255
    if dynamic:
        activation_ctr = PlaceholderObserver.with_args(eps=2**-12)
    else:
        observer: Any = estimator_observer(UniformQuantizationObserverBase)
        activation_ctr = observer.with_args(
            method=settings.calibration, percentile=settings.percentile, eps=2**-12)
    activation = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=quant_max,
                                  qscheme=torch.per_tensor_affine, is_dynamic=dynamic,
                                  observer_or_fake_quant_ctr=activation_ctr)
    if settings.per_channel:
        weight = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                                  qscheme=torch.per_channel_symmetric, ch_axis=0,
                                  observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(
                                      eps=2**-12))
    else:
        weight = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                                  qscheme=torch.per_tensor_symmetric,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(
                                      eps=2**-12))
    config = QuantizationConfig(activation, activation, weight, None, False)
    result = X86InductorQuantizer()
    result.set_global(config)
    for name in skip:
        result.set_module_name_qconfig(name, None)
    return result


def _convert(exported: fx.GraphModule, settings: StaticSettings, dynamic: bool,
             skip: Collection[str], batches: Sequence[Any], *,
             presets: dict[str, tuple[float, int]] | None = None,
             record: dict[str, tuple[float, int]] | None = None) -> fx.GraphModule:
    """Annotate, calibrate on ``batches`` (or preset the recorded qparams), convert."""
    with quiet():
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        try:
            prepared = prepare_pt2e(copy.deepcopy(exported), quantizer(settings, dynamic, skip))
        except Exception as exc:  # annotation fails in many exception types
            raise EngineError(f"torchao's X86InductorQuantizer cannot annotate this model: "
                              f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                              ) from None
        observers = {name: module for name, module in prepared.named_modules()
                     if hasattr(module, "estimator")}
        if presets is not None:
            missing = set(observers) - set(presets)
            if missing:
                raise EngineError(f"the saved PT2E model does not fit this architecture "
                                  f"(no qparams for {sorted(missing)[:3]})")
            for name, module in observers.items():
                module.preset = presets[name]
        with torch.no_grad():
            for batch in batches:
                prepared(*as_args(batch))
        if record is not None:
            for name, module in observers.items():
                if not module.estimator.empty:
                    scale, zero = module.calculate_qparams()
                    record[name] = (float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]))
        converted: fx.GraphModule = convert_pt2e(prepared)
        # the converted graph is an inference graph: let model.eval() (the core's, torch's
        # ONNX exporter's) pass through it instead of raising
        allow_exported_model_train_eval(converted)
    _drop_unused(converted)
    return converted


def _drop_unused(graph: fx.GraphModule) -> None:
    """Remove the float weights the converted graph no longer reads (their int8 copies are
    what it runs), so the state dict and the size hold what ships."""
    used = {str(node.target) for node in graph.graph.nodes if node.op == "get_attr"}
    used |= {str(node.target) for node in graph.graph.nodes if node.op == "call_module"}
    for name, _ in list(graph.named_parameters()) + list(graph.named_buffers()):
        if name in used:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = graph.get_submodule(owner_name) if owner_name else graph
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]


def _target_name(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def float_operators(graph: fx.GraphModule) -> list[str]:
    """Compute operators of a converted graph that run in float, as ``module (op)``.

    An operator runs in int8 when it is one inductor's x86 lowering has int8 kernels for
    (convolutions, matmuls, pooling, concatenation) and reads dequantized int8 (inductor
    lowers the dequantize-operator-quantize pattern into the int8 kernel), or when it is a
    post-operator inductor fuses into such a kernel (ReLU, add, GELU, ...); data movement
    is not reported. Any other operator computes in float.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Softplus()).eval()
        >>> prepared = Pt2eEngine().prepare(model, [torch.randn(8, 4)], StaticSettings())
        >>> prepared.build().float_ops
        ['1 (softplus)']
    """
    int8: dict[fx.Node, bool] = {}
    found: list[str] = []
    for node in graph.graph.nodes:
        if node.op != "call_function":
            int8[node] = False
            continue
        name = _target_name(node)
        inputs = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        if name.startswith(_QDQ):
            int8[node] = name.startswith("dequantize")
            continue
        from_int8 = name in _INT8_OPS and any(
            _target_name(arg).startswith("dequantize") for arg in inputs
            if arg.op == "call_function")
        fused = name in _FUSED_POST_OPS and any(int8.get(arg, False) and
                                                _target_name(arg) in _INT8_OPS for arg in inputs)
        int8[node] = from_int8 or fused or (name in _DATA_OPS and
                                            any(int8.get(arg, False) for arg in inputs))
        if not int8[node] and inputs and name not in _DATA_OPS:
            found.append(f"{_module_of(node) or node.name} ({name})")
    return found


def _module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).removeprefix("L['self'].").removeprefix("L__self__.")
