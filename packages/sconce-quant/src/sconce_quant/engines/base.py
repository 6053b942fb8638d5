"""What an int8 engine is: prepare a float model once, build int8 models from it, restore them.

An engine turns a float model plus calibration batches into a module that runs in int8 on a
real kernel library. :meth:`Engine.prepare` does the expensive, skip-independent work once
(tracing or exporting, calibration where it can be shared); :meth:`PreparedModel.build` then
makes the int8 model with some layers kept in float (mixed precision builds several).
:meth:`Engine.restore` rebuilds a built model's structure on a fresh float model from the
JSON-able record, so its saved state dict loads with ``weights_only=True``.

Example:
    >>> StaticSettings(calibration="percentile", percentile=99.9).to_dict()["calibration"]
    'percentile'
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from sconce.errors import TechniqueError
from sconce_quant.qparams import cpu_has_vnni

logger = logging.getLogger(__name__)

WEIGHT_ROUNDINGS: tuple[str, ...] = ("gptq", "nearest")
"""How weights reach their int8 codes: GPTQ (layer output kept closest) or nearest."""


class EngineError(TechniqueError):
    """An engine cannot quantize or run this model (the reason says why).

    Example:
        >>> issubclass(EngineError, TechniqueError)
        True
    """


@dataclass(frozen=True)
class StaticSettings:
    """How a static int8 model is calibrated and laid out (shared by every engine).

    Attributes:
        calibration: ``minmax``, ``percentile`` or ``mse`` (see :mod:`sconce_quant.calibration`).
        percentile: for ``percentile``, the share of values kept inside the range.
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: use 7-bit values on one side of each int8 product (activations for
            torch.ao, weights for ONNX Runtime), for CPUs without VNNI whose int8 kernels
            would otherwise saturate (default: on exactly when this CPU lacks VNNI).
        weight_rounding: ``gptq`` (each layer's weights rounded to keep its output on the
            calibration inputs closest, :func:`sconce_quant.gptq.gptq_round_symmetric`) or
            ``nearest`` (each weight to its nearest code). The ONNX Runtime engine applies it;
            torch.ao and PT2E round to nearest (they keep 8-bit weights and reduce the
            activations instead).

    Example:
        >>> StaticSettings(reduce_range=False).to_dict()["reduce_range"]
        False
    """

    calibration: str = "mse"
    percentile: float = 99.99
    per_channel: bool = True
    reduce_range: bool = field(default_factory=lambda: not cpu_has_vnni())
    weight_rounding: str = "gptq"

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict."""
        return {"calibration": self.calibration, "percentile": self.percentile,
                "per_channel": self.per_channel, "reduce_range": self.reduce_range,
                "weight_rounding": self.weight_rounding}


@dataclass
class Built:
    """An int8 model an engine built.

    Attributes:
        module: the model that runs in int8.
        record: JSON-able description the engine's ``restore`` needs.
        float_ops: operators that stay in float (the engine cannot quantize them), by name.
        float_layers: layers kept in float on request (mixed precision).

    Example:
        >>> Built(nn.Identity(), {"skip": []}).float_ops
        []
    """

    module: nn.Module
    record: dict[str, Any]
    float_ops: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)


class PreparedModel(Protocol):
    """A float model an engine has traced or exported and calibrated.

    Example:
        >>> hasattr(PreparedModel, "build")
        True
    """

    def build(self, skip: Collection[str] = ()) -> Built:
        """The int8 model with the layers named in ``skip`` kept in float."""
        ...


class Engine(Protocol):
    """An int8 engine: its name, whether it works here, prepare and restore.

    Example:
        >>> from sconce_quant.engines import ENGINES
        >>> all(isinstance(engine.name, str) for engine in ENGINES.values())
        True
    """

    name: str
    description: str

    def unavailable(self) -> str | None:
        """Why this engine cannot run on this machine, or None when it can."""
        ...

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: StaticSettings
                ) -> PreparedModel:
        """Trace or export ``model`` (eval mode, not modified) and calibrate it on ``batches``."""
        ...

    def restore(self, model: nn.Module, record: dict[str, Any], settings: StaticSettings
                ) -> nn.Module:
        """Rebuild a built model's structure on ``model`` (a fresh float model)."""
        ...


def as_args(inputs: Any) -> tuple[Any, ...]:
    """A batch of inputs as the positional arguments of ``model(*args)``.

    Example:
        >>> as_args(torch.zeros(1)), len(as_args((torch.zeros(1), torch.zeros(1))))
        ((tensor([0.]),), 2)
    """
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    return (inputs,)


def input_spec(inputs: Any) -> list[dict[str, Any]]:
    """Shapes and dtypes of a batch of inputs, JSON-able (for restoring without data).

    Example:
        >>> input_spec(torch.zeros(2, 3))
        [{'shape': [2, 3], 'dtype': 'float32'}]
    """
    return [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for t in as_args(inputs)]


def inputs_from_spec(spec: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
    """Zero tensors with the recorded shapes and dtypes.

    Example:
        >>> inputs_from_spec([{"shape": [1, 2], "dtype": "int64"}])[0].dtype
        torch.int64
    """
    return tuple(torch.zeros(item["shape"], dtype=getattr(torch, item["dtype"]))
                 for item in spec)


def first_tensor(outputs: Any) -> torch.Tensor:
    """The first tensor of a model's outputs (a tensor, a tuple, or a dict of tensors).

    Example:
        >>> first_tensor((torch.ones(1), torch.zeros(1)))
        tensor([1.])
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        outputs = tuple(outputs.values())
    if isinstance(outputs, (tuple, list)) and outputs:
        return first_tensor(outputs[0])
    raise EngineError(f"the model returned {type(outputs).__name__}, not tensors")
