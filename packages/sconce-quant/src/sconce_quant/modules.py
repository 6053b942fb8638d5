"""``WeightOnlyLinear``: a Linear layer whose weight is stored as int8 or packed int4 codes.

The weight is kept as unsigned codes (two per byte for int4), one float16 scale and one uint8
zero point per group of ``group_size`` inputs of each row. Three kernels run it:
``torch`` (ATen's int4 CPU kernel on the codes repacked in place into its layout, see
:mod:`sconce_quant.int4cpu`; 4-bit layers), ``onnxruntime`` (ONNX Runtime's ``MatMulNBits``,
which reads the packed codes directly, see :mod:`sconce_quant.lowbit`) and ``dequantize``
(the weight is dequantized on the fly, ``(codes - zero) * scale``, and a float matmul runs:
any device, and what torch's exporters and tracers see).

Example:
    >>> import torch
    >>> from sconce_quant.qparams import rtn_group_codes
    >>> linear = torch.nn.Linear(8, 3)
    >>> layer = WeightOnlyLinear.from_codes(rtn_group_codes(linear.weight, 4, 4, symmetric=False),
    ...                                     linear.bias)
    >>> layer.qweight.shape, layer.qweight.dtype  # 8 int4 codes per row in 4 bytes
    (torch.Size([3, 4]), torch.uint8)
    >>> bool((layer.dequantized_weight() - linear.weight).abs().max() < 0.2)
    True
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sconce.lowbit import GroupCodes, dequantize_groups, pack_int4, unpack_int4
from sconce_quant.int4cpu import (
    MAX_ROWS,
    Int4CpuKernel,
    from_kernel_layout,
    repack_to_kernel,
    repack_to_portable,
    scale_and_offset,
)
from sconce_quant.lowbit import NBitsKernel
from sconce_quant.packing import NBitsWeight, nbits_from_stored

if TYPE_CHECKING:
    from sconce_quant.siblings import SiblingGroup

KERNELS: tuple[str, ...] = ("dequantize", "onnxruntime", "torch")
"""How a :class:`WeightOnlyLinear` runs its matmul."""

logger = logging.getLogger(__name__)


class WeightOnlyLinear(nn.Module):
    """A Linear layer with int8 or int4 group-quantized weights, run by a low-bit kernel.

    Args:
        in_features, out_features: the layer's shape.
        bits: 4 (packed two per byte) or 8.
        group_size: inputs per scale/zero-point group.
        bias: whether the layer has a (float) bias.
        kernel: ``dequantize``, ``onnxruntime`` or ``torch`` (see the module docstring).
        accuracy_level: for ``onnxruntime``: ``MatMulNBits``'s compute type (4: activations
            quantized to int8 per block inside the kernel; 1: float32).
        shards: for ``onnxruntime``: how many parts the output features are split into, run
            side by side on torch's threads (:class:`~sconce_quant.lowbit.NBitsKernel`).

    Example:
        >>> layer = WeightOnlyLinear(8, 2, bits=4, group_size=8)
        >>> layer.qweight.shape, layer(torch.randn(3, 8)).shape
        (torch.Size([2, 4]), torch.Size([3, 2]))
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int,
                 bias: bool = True, kernel: str = "dequantize", accuracy_level: int = 4,
                 shards: int = 1) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.kernel = kernel
        self.accuracy_level = accuracy_level
        self._shards = shards
        self._nbits: NBitsKernel | None = None
        self._int4: Int4CpuKernel | None = None
        self._in_kernel_layout = False  # qweight holds the ``torch`` kernel's layout
        self.siblings: tuple[SiblingGroup, int] | None = None  # set by SiblingGroup
        groups = math.ceil(in_features / group_size)
        columns = math.ceil(in_features / 2) if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, columns, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_codes(cls, codes: GroupCodes, bias: torch.Tensor | None, *,
                   kernel: str = "dequantize", accuracy_level: int = 4) -> WeightOnlyLinear:
        """A layer holding ``codes`` (packed when 4-bit) and a copy of ``bias``."""
        out_features, in_features = codes.codes.shape
        layer = cls(in_features, out_features, bits=codes.bits, group_size=codes.group_size,
                    bias=bias is not None, kernel=kernel, accuracy_level=accuracy_level)
        stored = pack_int4(codes.codes) if codes.bits == 4 else codes.codes.to(torch.uint8)
        layer.qweight.copy_(stored)
        layer.scales.copy_(codes.scales.to(torch.float16))
        layer.zeros.copy_(codes.zeros.to(torch.uint8))
        if bias is not None and layer.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias.detach().to(torch.float32))
        return layer

    def codes(self) -> torch.Tensor:
        """The unsigned codes, unpacked: ``(out_features, in_features)`` uint8."""
        if self._in_kernel_layout:
            return from_kernel_layout(self.qweight, self.in_features)
        if self.bits == 4:
            return unpack_int4(self.qweight, self.in_features)
        return self.qweight

    def code_rows(self, index: torch.Tensor) -> torch.Tensor:
        """The unpacked codes of the rows in ``index`` (an embedding's lookups)."""
        if self._in_kernel_layout:
            return self.codes().index_select(0, index)
        rows = self.qweight.index_select(0, index)
        return unpack_int4(rows, self.in_features) if self.bits == 4 else rows

    def portable_qweight(self) -> torch.Tensor:
        """``qweight`` in sconce's own packing (what state dicts hold on every machine): the
        buffer itself, or a converted copy while the ``torch`` kernel's layout is in it."""
        return pack_int4(self.codes()) if self._in_kernel_layout else self.qweight

    def use_kernel_layout(self) -> None:
        """Repack ``qweight`` in place into the ``torch`` kernel's layout (same size)."""
        if not self._in_kernel_layout:
            repack_to_kernel(self.qweight, self.in_features)
            self._in_kernel_layout = True

    def use_portable_layout(self, *, reset_group: bool = True) -> None:
        """Repack ``qweight`` in place back into sconce's own packing (for ``MatMulNBits``,
        which reads it); a sibling group that ran this layer's rows repacks on its next
        call (``reset_group=False``: the group itself is repacking)."""
        if self._in_kernel_layout:
            repack_to_portable(self.qweight, self.in_features)
            self._in_kernel_layout = False
            self._int4 = None
            if reset_group and self.siblings is not None:
                self.siblings[0].reset()

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        return dequantize_groups(self.codes(), self.scales, self.zeros, self.group_size)

    @property
    def shards(self) -> int:
        """How many parts the ``onnxruntime`` kernel splits the output features into."""
        return self._shards

    @shards.setter
    def shards(self, value: int) -> None:
        if value != self._shards:
            self._shards = value
            self._nbits = None  # its sessions hold the old split

    def nbits_weight(self) -> NBitsWeight:
        """The weight in ONNX Runtime's ``MatMulNBits`` layout: its codes are a view of
        ``qweight`` when the inputs fill whole groups
        (:func:`~sconce_quant.packing.nbits_from_stored`)."""
        self.use_portable_layout()
        block = self.group_size if self.group_size > 0 else self.in_features
        return nbits_from_stored(self.qweight, self.scales, self.zeros,
                                 in_features=self.in_features, bits=self.bits, block_size=block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel
        if kernel != "dequantize" and x.device.type == "cpu" and not _tracing(x):
            if kernel == "torch" and x.numel() >= MAX_ROWS * self.in_features:
                pass  # many rows: a float matmul on the dequantized weight is faster
            elif self.siblings is not None:
                group, index = self.siblings
                return group.output(index, x)
            elif kernel == "torch":
                return (self._int4 or self.int4cpu_kernel())(x)
            else:
                if self._nbits is None:
                    self._nbits = NBitsKernel(self.nbits_source,
                                              accuracy_level=self.accuracy_level,
                                              shards=self._shards)
                return self._nbits(x)
        weight = self.dequantized_weight().to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def int4cpu_kernel(self) -> Int4CpuKernel:
        """The ``torch`` kernel on this layer's codes (repacked in place on first use)."""
        if self._int4 is None:
            self.use_kernel_layout()
            self._int4 = Int4CpuKernel(self.qweight, scale_and_offset(self.scales, self.zeros),
                                       self.group_size,
                                       None if self.bias is None else self.bias.detach())
        return self._int4

    def nbits_source(self) -> tuple[NBitsWeight, torch.Tensor | None]:
        """The packed weight and the bias, as :class:`~sconce_quant.lowbit.NBitsKernel` reads
        them."""
        return self.nbits_weight(), self.bias

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._nbits = self._int4 = None  # the kernels packed the old codes
        self._in_kernel_layout = False  # state dicts hold sconce's own packing
        if self.siblings is not None:
            self.siblings[0].reset()

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._in_kernel_layout:  # the kernel's layout depends on the CPU: never saved
            destination[prefix + "qweight"] = self.portable_qweight()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_nbits"] = state["_int4"] = None  # a copy packs its own codes
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}, "
                f"bias={self.bias is not None}, kernel={self.kernel}"
                + (f", shards={self._shards}" if self._shards > 1 else ""))


def _tracing(x: torch.Tensor) -> bool:
    """Whether torch is exporting, tracing or compiling ``x``'s computation (they see the
    dequantizing code)."""
    if type(x) is not torch.Tensor or torch.compiler.is_compiling():
        return True  # the cheapest checks first: this runs at every call of every layer
    if torch.compiler.is_exporting() or torch.jit.is_tracing():  # type: ignore[attr-defined, no-untyped-call]  # torch: untyped, implicit re-export
        return True
    if torch._is_functional_tensor(x):  # a plain tensor is fake only behind functionalization
        from torch._subclasses.fake_tensor import is_fake

        if is_fake(x):
            return True
    return _onnx_export_check()()


@functools.cache
def _onnx_export_check() -> Callable[[], bool]:
    """``torch.onnx.is_in_onnx_export`` without its two imports on every call (it runs at
    every call of every layer): the flags it reads, looked up once; the public function
    where torch keeps them elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    return lambda: bool(GLOBALS.in_onnx_export or _flags._is_onnx_exporting)


class WeightOnlyEmbedding(nn.Module):
    """An embedding whose table is the quantized weight of the output layer it is tied to.

    Language models often share one matrix between the token embedding and the output
    layer. When that layer becomes a :class:`WeightOnlyLinear`, this module looks tokens up
    in the same codes (the rows of the looked-up tokens are dequantized), so the matrix is
    stored once, quantized. It holds no tensors of its own; the output layer is not one of
    its submodules (the model owns it elsewhere).

    Args:
        head: the quantized output layer (``out_features`` tokens of ``in_features`` each).
        padding_idx: kept from the float embedding (informational; lookups are plain).

    Example:
        >>> from sconce_quant.qparams import rtn_group_codes
        >>> table = torch.randn(10, 16)
        >>> head = WeightOnlyLinear.from_codes(rtn_group_codes(table, 8, 16, symmetric=False),
        ...                                    None)
        >>> embedding = WeightOnlyEmbedding(head)
        >>> ids = torch.tensor([[3, 7]])
        >>> torch.equal(embedding(ids)[0, 1], head.dequantized_weight()[7])
        True
    """

    head: WeightOnlyLinear

    def __init__(self, head: WeightOnlyLinear, padding_idx: int | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "head", head)  # not a submodule: the model owns it
        self.num_embeddings = head.out_features
        self.embedding_dim = head.in_features
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantized table (for code that reads ``embedding.weight``)."""
        return self.head.dequantized_weight()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self.head
        flat = ids.reshape(-1)
        values = dequantize_groups(head.code_rows(flat), head.scales.index_select(0, flat),
                                   head.zeros.index_select(0, flat), head.group_size)
        return values.reshape(*ids.shape, head.in_features)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, tied to an int{self.head.bits} "
                f"output layer")
