"""Sparse storage of int8 layers: torch.ao's quantized Linear / Conv keep running, their int8
weights are saved compressed.

``quant.int8`` (the ``fx`` engine) and ``quant.dynamic`` (the ``torch`` engine) leave torch.ao
quantized layers whose weight is a qint8 tensor packed for fbgemm / oneDNN. A pruned weight
is still pruned there: a pruned value is stored as the zero point of its channel.
:class:`SparseQuantized` holds such a layer and saves its weight as int8 values in a compressed
encoding (:mod:`sconce_sparse.encoding`, background = the zero points) with the scales and zero
points beside them, so a 90%-sparse int8 weight ships in about a fifth of a byte per value.
Loading rebuilds the exact qint8 weight and hands it to the layer (``set_weight_bias``); the
layer itself runs on its int8 engine as before — there is no sparse int8 kernel here.

The wrapped layer is kept out of the module tree (it is not a child), so ``state_dict()`` holds
only the compressed form.

Example:
    >>> import torch
    >>> import torch.ao.nn.quantized as nnq
    >>> layer = nnq.Linear(64, 16)
    >>> layer.set_weight_bias(torch.quantize_per_tensor(torch.eye(16, 64), 0.1, 0, torch.qint8),
    ...                       None)
    >>> wrapped = SparseQuantized.wrap(layer)
    >>> wrapped.encoding, wrapped.nnz, sorted(wrapped.state_dict())
    ('relative', 16, ['scale', 'weight_gaps', 'weight_row_entries', 'weight_scales', \
'weight_values', 'weight_zero_points', 'zero_point'])
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from sconce_sparse.encoding import decode_dense, encode, encoding_keys

logger = logging.getLogger(__name__)

__all__ = ["SparseQuantized", "is_int8_layer"]

_TORCH_QUANTIZED = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")
_PREFIX = "weight_"


def is_int8_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a torch.ao quantized layer with a qint8 weight it can be given back.

    Example:
        >>> import torch.ao.nn.quantized as nnq
        >>> is_int8_layer(nnq.Linear(4, 4)), is_int8_layer(nn.Linear(4, 4))
        (True, False)
    """
    if not type(module).__module__.startswith(_TORCH_QUANTIZED):
        return False
    weight = getattr(module, "weight", None)
    if not callable(weight) or not callable(getattr(module, "set_weight_bias", None)):
        return False
    value = weight()
    return isinstance(value, torch.Tensor) and value.is_quantized and value.dtype == torch.qint8


def _qparams(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return (weight.q_per_channel_scales().to(torch.float64),
                weight.q_per_channel_zero_points().to(torch.int64), weight.q_per_channel_axis())
    return (torch.tensor([weight.q_scale()], dtype=torch.float64),
            torch.tensor([weight.q_zero_point()], dtype=torch.int64), None)


class SparseQuantized(nn.Module):
    """A torch.ao int8 layer whose qint8 weight is saved compressed; it runs unchanged.

    Use :meth:`wrap`; :func:`sconce.load` builds one around the layer that the quantization
    technique's restore put back (``per_channel`` as saved), then loads the compressed weight
    into it.
    """

    _inner: Any
    bias: torch.Tensor | None
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, inner: nn.Module, per_channel: bool | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_inner", inner)  # not a child: its dense weight is not saved
        weight = self._inner.weight()
        self.weight_shape = tuple(weight.shape)
        self.axis = _qparams(weight)[2]
        if per_channel is not None:  # the saved weight's scheme, not the fresh layer's
            self.axis = 0 if per_channel else None
        if self.axis not in (None, 0):
            raise ValueError(f"int8 weights quantized along axis {self.axis} are not supported")
        self.encoding = "bitmask"
        for name in encoding_keys(self.encoding):
            self.register_buffer(_PREFIX + name, torch.zeros(0))
        self.register_buffer("weight_scales", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("weight_zero_points", torch.zeros(0, dtype=torch.int64))
        bias = self._inner.bias() if callable(getattr(inner, "bias", None)) else None
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.has_output_qparams = hasattr(inner, "scale") and hasattr(inner, "zero_point")
        if self.has_output_qparams:
            self.register_buffer("scale", torch.tensor(float(self._inner.scale),
                                                       dtype=torch.float64))
            self.register_buffer("zero_point", torch.tensor(int(self._inner.zero_point)))

    @classmethod
    def wrap(cls, inner: nn.Module, encoding: str = "auto") -> SparseQuantized:
        """Wrap a torch.ao int8 layer, encoding its current weight."""
        layer = cls(inner)
        layer._store(layer._inner.weight(), encoding)
        return layer

    @property
    def inner(self) -> nn.Module:
        """The int8 layer that runs."""
        module: nn.Module = self._inner
        return module

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(out, in)`` of the 2-D view."""
        rows = self.weight_shape[0]
        return rows, int(torch.Size(self.weight_shape[1:]).numel())

    def _row_zero_points(self) -> torch.Tensor:
        return self.weight_zero_points.expand(self.matrix_shape[0]).to(torch.int8)

    def _store(self, weight: torch.Tensor, encoding: str) -> None:
        scales, zero_points, _ = _qparams(weight)
        self.weight_scales, self.weight_zero_points = scales, zero_points
        codes = weight.int_repr().reshape(self.matrix_shape)
        stored = encode(codes, encoding, self._row_zero_points())
        for name in encoding_keys(self.encoding):
            delattr(self, _PREFIX + name)
        self.encoding = stored.encoding
        for name, tensor in stored.tensors.items():
            self.register_buffer(_PREFIX + name, tensor)

    @property
    def nnz(self) -> int:
        """Stored int8 values that differ from their zero point."""
        return int((self.codes() != self._row_zero_points()[:, None]).sum())

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the compressed weight with its scales and zero points."""
        names = [_PREFIX + n for n in encoding_keys(self.encoding)]
        names += ["weight_scales", "weight_zero_points"]
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in names)

    def codes(self) -> torch.Tensor:
        """The int8 weight codes, ``(out, in)``, decoded from storage."""
        tensors = {n: getattr(self, _PREFIX + n) for n in encoding_keys(self.encoding)}
        return decode_dense(self.encoding, tensors, self.matrix_shape, self._row_zero_points())

    def qweight(self) -> torch.Tensor:
        """The qint8 weight, exactly as the layer had it."""
        codes = self.codes().reshape(self.weight_shape)
        if self.axis is None:
            return torch._make_per_tensor_quantized_tensor(
                codes, float(self.weight_scales[0]), int(self.weight_zero_points[0]))
        return torch._make_per_channel_quantized_tensor(codes, self.weight_scales,
                                                        self.weight_zero_points, self.axis)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        encoding = "bitmask" if prefix + _PREFIX + "bitmask" in state_dict else "relative"
        for name in encoding_keys(self.encoding):
            delattr(self, _PREFIX + name)
        self.encoding = encoding
        for name in [*(_PREFIX + n for n in encoding_keys(encoding)), "weight_scales",
                     "weight_zero_points"]:
            saved = state_dict.get(prefix + name)
            self.register_buffer(name, torch.empty_like(saved) if isinstance(saved, torch.Tensor)
                                 else torch.zeros(0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.weight_scales.numel():
            self._inner.set_weight_bias(self.qweight(), self.bias)
        if self.has_output_qparams:
            self._inner.scale = float(self.scale.item())
            self._inner.zero_point = int(self.zero_point.item())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{type(self._inner).__name__}, weight={self.weight_shape}, " \
               f"encoding={self.encoding}, int8 values"
