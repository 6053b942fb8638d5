"""Dynamic int8 LSTM / GRU whose state dict is plain tensors (loads with ``weights_only``).

torch.ao's dynamic recurrent layers keep their weights in TorchScript objects, which
``torch.load(..., weights_only=True)`` refuses. :func:`plain_state_rnns` turns each such layer
into a subclass that saves its int8 weights and float biases as ordinary tensors
(``weight_ih_l0``, ``bias_ih_l0``, ...) and packs them again when loaded.

Example:
    >>> import io, torch
    >>> from torch.ao.quantization import quantize_dynamic
    >>> model = plain_state_rnns(quantize_dynamic(torch.nn.Sequential(torch.nn.LSTM(4, 8)),
    ...                                           {torch.nn.LSTM}))
    >>> sorted(model.state_dict())[:2]
    ['0.bias_hh_l0', '0.bias_ih_l0']
    >>> buffer = io.BytesIO(); torch.save(model.state_dict(), buffer); _ = buffer.seek(0)
    >>> model.load_state_dict(torch.load(buffer, weights_only=True))
    <All keys matched successfully>
"""

from __future__ import annotations

import logging
from typing import Any, cast

from torch import nn

logger = logging.getLogger(__name__)

_CLASSES: dict[type, type] = {}


def _plain_class(base: type) -> type:
    """The subclass of a dynamic recurrent class with a plain-tensor state dict."""
    if base not in _CLASSES:

        class PlainStateRNN(base):  # type: ignore[misc]  # base is a runtime class argument
            """A dynamic int8 recurrent layer saved as plain tensors."""

            def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                                    keep_vars: bool) -> None:
                for group in self._weight_bias().values():
                    for name, tensor in group.items():
                        destination[prefix + name] = tensor

            def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                                      local_metadata: Any, strict: bool, missing_keys: list[str],
                                      unexpected_keys: list[str], error_msgs: list[str]) -> None:
                names = [n for group in self._weight_bias().values() for n in group]
                values = {}
                for name in names:
                    if prefix + name in state_dict:
                        values[name] = state_dict[prefix + name]
                    else:
                        missing_keys.append(prefix + name)
                if len(values) == len(names):
                    self.set_weight_bias(values)
                    _hide_packed(self)

        PlainStateRNN.__name__ = PlainStateRNN.__qualname__ = base.__name__
        _CLASSES[base] = PlainStateRNN
    return _CLASSES[base]


def _hide_packed(module: nn.Module) -> None:
    """Keep the packed weights as a plain list, so the state dict does not recurse into them."""
    packed = module._modules.pop("_all_weight_values", None)
    if packed is not None:
        module.__dict__["_all_weight_values"] = list(cast(nn.ModuleList, packed))


def plain_state_rnns(model: nn.Module) -> nn.Module:
    """Give every dynamic int8 LSTM / GRU in ``model`` a plain-tensor state dict (in place).

    Example:
        >>> from torch.ao.quantization import quantize_dynamic
        >>> model = plain_state_rnns(quantize_dynamic(nn.Sequential(nn.GRU(4, 4)), {nn.GRU}))
        >>> "0.weight_ih_l0" in model.state_dict()
        True
    """
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase

    for module in model.modules():
        if isinstance(module, RNNBase) and type(module) not in _CLASSES.values():
            module.__class__ = _plain_class(type(module))
            _hide_packed(module)
    return model
