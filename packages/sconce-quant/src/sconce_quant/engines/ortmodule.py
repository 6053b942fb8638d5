"""Run an ONNX model with ONNX Runtime as a torch module, and export float models to ONNX.

:class:`OrtModule` keeps the serialized ONNX model in a uint8 buffer, so the state dict holds
the whole int8 model (it saves and loads with ``weights_only=True``) and the ONNX file that
would ship is exactly that buffer. The session is created on first use with as many intra-op
threads as torch uses at that moment, and recreated when torch's thread count changes, so
latency is measured with the same fixed threads as any other model.

Example:
    >>> import torch
    >>> from torch import nn
    >>> onnx_bytes = export_onnx_bytes(nn.Linear(3, 2), (torch.randn(1, 3),))
    >>> module = OrtModule(onnx_bytes, input_names=["input_0"], output_names=["output_0"])
    >>> module(torch.randn(4, 3)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sconce_quant.engines.base import EngineError, as_args

logger = logging.getLogger(__name__)

OPSET = 17


class OrtModule(nn.Module):
    """An ONNX model run by ONNX Runtime's CPU execution provider.

    Args:
        onnx_bytes: the serialized model.
        input_names: the graph's inputs, in the order ``forward`` takes them.
        output_names: the graph's outputs; ``forward`` returns a tensor for one output and a
            tuple otherwise.

    Example:
        >>> module = OrtModule(export_onnx_bytes(nn.ReLU(), torch.randn(1, 2)),
        ...                    input_names=["input_0"], output_names=["output_0"])
        >>> module(torch.tensor([[-1.0, 2.0]]))
        tensor([[0., 2.]])
    """

    onnx_model: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, onnx_bytes: bytes, *, input_names: Sequence[str],
                 output_names: Sequence[str]) -> None:
        super().__init__()
        self.register_buffer("onnx_model", torch.frombuffer(bytearray(onnx_bytes),
                                                            dtype=torch.uint8).clone())
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._session: Any = None
        self._threads = 0

    @classmethod
    def placeholder(cls, nbytes: int, *, input_names: Sequence[str],
                    output_names: Sequence[str]) -> OrtModule:
        """An empty module of the right size, for ``load_state_dict`` to fill."""
        return cls(bytes(nbytes), input_names=input_names, output_names=output_names)

    def onnx_bytes(self) -> bytes:
        """The serialized ONNX model."""
        return self.onnx_model.cpu().numpy().tobytes()

    def session(self) -> Any:
        """The ONNX Runtime session, (re)created for torch's current thread count."""
        threads = torch.get_num_threads()
        if self._session is None or threads != self._threads:
            self._session = make_session(self.onnx_bytes(), threads)
            self._threads = threads
        return self._session

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise EngineError(f"this int8 model takes {len(self.input_names)} input(s), "
                              f"got {len(inputs)}")
        device = inputs[0].device
        feeds = {name: t.detach().cpu().contiguous().numpy()
                 for name, t in zip(self.input_names, inputs, strict=True)}
        outputs = self.session().run(self.output_names, feeds)
        tensors = tuple(torch.from_numpy(out).to(device) for out in outputs)
        return tensors[0] if len(tensors) == 1 else tensors

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._session = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # sessions cannot be copied; a copy makes its own
        return state

    def extra_repr(self) -> str:
        return f"onnx_bytes={self.onnx_model.numel()}, inputs={self.input_names}"


def make_session(onnx_bytes: bytes, threads: int, *, optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads.

    Example:
        >>> session = make_session(export_onnx_bytes(nn.ReLU(), torch.randn(1, 2)), threads=1)
        >>> [i.name for i in session.get_inputs()]
        ['input_0']
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


class _Flat(nn.Module):
    """Wraps a model so its outputs are a flat tuple of tensors (dicts give their values)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> Any:
        return flatten_outputs(self.model(*inputs))


def flatten_outputs(outputs: Any) -> tuple[torch.Tensor, ...] | torch.Tensor:
    """A model's outputs as one tensor or a flat tuple of tensors.

    Example:
        >>> flatten_outputs({"a": torch.zeros(1), "b": (torch.ones(1),)})
        (tensor([0.]), tensor([1.]))
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        outputs = tuple(outputs.values())
    if isinstance(outputs, (tuple, list)):
        flat: list[torch.Tensor] = []
        for item in outputs:
            part = flatten_outputs(item)
            flat.extend(part if isinstance(part, tuple) else (part,))
        return tuple(flat)
    raise EngineError(f"cannot export a model that returns {type(outputs).__name__}")


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run Hugging Face transformers models with their plain ("eager") attention for a while.

    Their default, torch's fused ``scaled_dot_product_attention``, exports to a decomposed
    graph that ONNX Runtime runs slower than the plain matmul-softmax-matmul it computes; the
    math is the same. Models without a transformers config are untouched.

    Example:
        >>> with eager_attention(nn.Linear(2, 2)):
        ...     pass
    """
    changed: dict[int, tuple[Any, str]] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if isinstance(current, str) and current != "eager" and id(config) not in changed:
            changed[id(config)] = (config, current)
    try:
        for config, _ in changed.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for config, previous in changed.values():
            config._attn_implementation = previous


def export_onnx_bytes(model: nn.Module, inputs: Any) -> bytes:
    """Export a float model to ONNX (dynamic batch dimension; every dimension of integer
    inputs, such as token ids, is dynamic too).

    Uses torch's TorchScript-based exporter, whose node names keep the module paths (so
    layers can be named), and falls back to the ``torch.export``-based one. Transformers
    models are exported with their eager attention (:func:`eager_attention`).

    Raises:
        EngineError: neither exporter can export the model.

    Example:
        >>> export_onnx_bytes(nn.Linear(2, 2), torch.randn(1, 2))[:2]
        b'\\x08\\x08'
    """
    with eager_attention(model):
        return _export(model, as_args(inputs))


def _export(model: nn.Module, args: tuple[Any, ...]) -> bytes:
    wrapped = _Flat(model).eval()
    with torch.no_grad():
        outputs = wrapped(*args)
    count = 1 if isinstance(outputs, torch.Tensor) else len(outputs)
    input_names = [f"input_{i}" for i in range(len(args))]
    output_names = [f"output_{i}" for i in range(count)]
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in zip(input_names, args, strict=True):
        dims = range(tensor.dim()) if not tensor.dtype.is_floating_point else [0]
        axes[name] = {d: f"{name}_dim{d}" for d in dims}
    # the torch.export-based exporter takes the same dynamic dimensions as dynamic_shapes,
    # shaped like the wrapper's one variadic argument
    shapes = (tuple({d: torch.export.Dim.AUTO for d in axes[name]} for name in input_names),)
    for name in output_names:
        axes[name] = {0: "batch"}
    errors = []
    for dynamo in (False, True):
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs: dict[str, Any] = ({"dynamo": True, "dynamic_shapes": shapes} if dynamo
                                          else {"dynamo": False, "dynamic_axes": axes})
                torch.onnx.export(wrapped, args, buffer,  # type: ignore[arg-type]  # takes a BytesIO
                                  input_names=input_names,
                                  output_names=output_names, opset_version=OPSET,
                                  do_constant_folding=True, **kwargs)
            return buffer.getvalue()
        except Exception as exc:  # both exporters raise many kinds of errors
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}")
    raise EngineError("torch.onnx cannot export this model (" + "; ".join(errors) + ")")
