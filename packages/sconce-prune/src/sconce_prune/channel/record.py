"""The architecture record: what pruning changed, as JSON, and how to replay it.

``snapshot`` notes every module's tensor shapes and counting attributes before pruning;
``changes`` lists what differs afterwards (new tensor shapes, new attribute values, layers
replaced by ``nn.Identity`` when a BatchNorm was folded). ``replay`` rebuilds exactly that
structure on a fresh model of the original architecture, so ``sconce.load`` can load the
pruned weights with ``weights_only=True``.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    >>> before = snapshot(net)
    >>> net[0] = nn.Linear(4, 3); net[1] = nn.Linear(3, 2)
    >>> fresh = replay(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), changes(before, net))
    >>> fresh[0].weight.shape, fresh[1].in_features
    (torch.Size([3, 4]), 3)
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from torch import nn

from sconce.errors import ModelError

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


def _attributes(module: nn.Module) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if type(value) is int:
            found[key] = value
        elif isinstance(value, tuple) and value and all(type(v) is int for v in value):
            found[key] = list(value)
    return found


def _tensors(module: nn.Module) -> dict[str, list[int] | None]:
    shapes: dict[str, list[int] | None] = {}
    for store in (module._parameters, module._buffers):
        for key, value in store.items():
            shapes[key] = None if value is None else list(value.shape)
    return shapes


def snapshot(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every module's type, tensor shapes and integer attributes."""
    return {name: {"type": type(m).__name__, "tensors": _tensors(m), "attrs": _attributes(m)}
            for name, m in model.named_modules()}


def changes(before: dict[str, dict[str, Any]], model: nn.Module,
            channels_last: bool = False) -> dict[str, Any]:
    """The JSON-able record of what changed since ``before`` (see :func:`replay`)."""
    modules: dict[str, Any] = {}
    replaced: dict[str, str] = {}
    after = dict(model.named_modules())
    for name, old in before.items():
        module = after.get(name)
        if module is None:
            continue
        if type(module).__name__ != old["type"]:
            if not isinstance(module, nn.Identity):
                raise ModelError(f"{name} changed to {type(module).__name__}; only "
                                 "replacements by nn.Identity can be recorded")
            replaced[name] = "Identity"
            continue
        tensors = {k: v for k, v in _tensors(module).items() if old["tensors"].get(k) != v}
        attrs = {k: v for k, v in _attributes(module).items() if old["attrs"].get(k) != v}
        if tensors or attrs:
            modules[name] = {"tensors": tensors, "attrs": attrs}
    record = {"version": RECORD_VERSION, "modules": modules, "replaced": replaced,
              "channels_last": bool(channels_last)}
    json.dumps(record)  # a record that is not JSON-able is a bug, caught here
    return record


def replay(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Give ``model`` (original architecture) the structure the record describes.

    Raises:
        ModelError: the record does not fit this model.
    """
    try:
        for name, entry in record.get("modules", {}).items():
            module = model.get_submodule(name)
            for key, shape in entry.get("tensors", {}).items():
                _resize(module, key, shape)
            for key, value in entry.get("attrs", {}).items():
                current = getattr(module, key, None)
                setattr(module, key, tuple(value) if isinstance(current, tuple) or
                        isinstance(value, list) else value)
        for name in record.get("replaced", {}):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Identity())
    except AttributeError as exc:
        raise ModelError(f"the channel-pruning record does not fit this model ({exc}); "
                         "load it with the architecture it was pruned from") from None
    if record.get("channels_last"):
        to_channels_last(model)
    return model


def _resize(module: nn.Module, key: str, shape: list[int] | None) -> None:
    if key in module._parameters:
        old = module._parameters[key]
        if shape is None:
            module._parameters[key] = None
            return
        dtype = old.dtype if old is not None else torch.float32
        grad = old.requires_grad if old is not None else True
        module._parameters[key] = nn.Parameter(torch.zeros(shape, dtype=dtype),
                                               requires_grad=grad)
    elif key in module._buffers:
        old_buffer = module._buffers[key]
        if shape is None:
            module._buffers[key] = None
            return
        dtype = old_buffer.dtype if old_buffer is not None else torch.float32
        module._buffers[key] = torch.zeros(shape, dtype=dtype)
    else:
        raise AttributeError(f"{type(module).__name__} has no tensor {key!r}")


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 4-D conv weight channels-last (oneDNN then runs NHWC kernels)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.weight.data = module.weight.data.contiguous(
                memory_format=torch.channels_last)
    return model
