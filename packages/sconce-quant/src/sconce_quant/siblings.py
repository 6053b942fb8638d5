"""Sibling weight-only layers: layers that read the same input run as one kernel call.

A transformer block's query, key and value projections read the same normalized hidden
state, and its MLP's gate and up projections read the same input. Decoding one token calls
each of them on one row, so the fixed cost of a call (Python, the ONNX Runtime session)
weighs as much as the arithmetic. A :class:`SiblingGroup` stacks its members' rows into one
kernel (:class:`~sconce_quant.lowbit.NBitsKernel` or, for the ``torch`` kernel,
:class:`~sconce_quant.int4cpu.Int4CpuKernel`); the first member called with an input computes
every member's output, and the others take theirs from that call while the input is the
same tensor, unchanged (the same object at the same version). A member called alone, or
with another input, computes the whole group again, so the result is always right; the
saving needs the siblings to be called one after another on the same tensor, as they are in
these blocks.

Groups are found by running the model once (:func:`find_siblings`) and recorded by layer
name, so a loaded model gets the same groups.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_quant.modules import WeightOnlyLinear
    >>> from sconce_quant.qparams import rtn_group_codes
    >>> def layer(n):
    ...     return WeightOnlyLinear.from_codes(rtn_group_codes(torch.randn(n, 32), 4, 16,
    ...                                        symmetric=False), None, kernel="onnxruntime")
    >>> q, k = layer(8), layer(4)
    >>> x = torch.randn(1, 32)
    >>> alone = q(x), k(x)
    >>> SiblingGroup([q, k])  # doctest: +ELLIPSIS
    SiblingGroup(2 layers, 12 outputs)
    >>> torch.allclose(q(x), alone[0], atol=1e-5) and torch.allclose(k(x), alone[1], atol=1e-5)
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sconce_quant.int4cpu import ROW_CHUNK, Int4CpuKernel, repack_to_kernel, scale_and_offset
from sconce_quant.lowbit import NBitsKernel
from sconce_quant.packing import NBitsWeight, nbits_from_stored

if TYPE_CHECKING:
    from sconce_quant.modules import WeightOnlyLinear


class SiblingGroup:
    """Weight-only layers of one input size and format whose outputs one kernel computes.

    Creating the group attaches it to its members (``member.siblings``). Their state (codes,
    scales, bias) stays theirs; when the group's kernel is first built, the members' codes
    become row ranges of one tensor (:meth:`shared_codes`) that the kernel reads in place.

    Args:
        members: two or more :class:`~sconce_quant.modules.WeightOnlyLinear` layers with the
            same ``in_features``, ``bits``, ``group_size``, ``accuracy_level`` and ``kernel``
            (``onnxruntime`` or ``torch``; for ``torch``, outputs in multiples of
            :data:`~sconce_quant.int4cpu.ROW_CHUNK`, so each member's rows are packed as if
            alone).
        shards: the group kernel's shards (see :class:`~sconce_quant.lowbit.NBitsKernel`).
    """

    def __init__(self, members: list[WeightOnlyLinear], shards: int = 1) -> None:
        formats = {(m.in_features, m.bits, m.group_size, m.accuracy_level, m.kernel)
                   for m in members}
        if len(members) < 2 or len(formats) != 1:
            raise ValueError("a sibling group needs two or more layers of one input size, "
                             f"bit width, group size, compute type and kernel, not "
                             f"{sorted(formats)}")
        if members[0].kernel == "torch" and any(m.out_features % ROW_CHUNK for m in members):
            raise ValueError(f"layers on the torch kernel group only with outputs in multiples "
                             f"of {ROW_CHUNK}, not {[m.out_features for m in members]}")
        self.members = list(members)
        self.sizes = [m.out_features for m in members]
        self.shards = shards
        self._kernel: NBitsKernel | Int4CpuKernel | None = None
        self._lock = threading.Lock()
        self._input: torch.Tensor | None = None
        self._version = -1
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._taken: set[int] = set()  # members that took their output for ``_input``
        for index, member in enumerate(members):
            member.siblings = (self, index)

    @property
    def kernel(self) -> NBitsKernel | Int4CpuKernel:
        """The kernel on every member's rows (packed on its first call)."""
        if self._kernel is None:
            if self.members[0].kernel == "torch":
                self._kernel = self._int4cpu_kernel()
            else:
                self._kernel = NBitsKernel(self.nbits_source, shards=self.shards,
                                           accuracy_level=self.members[0].accuracy_level)
        return self._kernel

    def _int4cpu_kernel(self) -> Int4CpuKernel:
        """ATen's int4 kernel on the members' codes stacked (:meth:`shared_codes`) and
        repacked in place into its layout: the members' ``qweight`` views hold their rows in
        that layout (whole chunks of rows, packed as if alone)."""
        stacked = self.shared_codes()
        repack_to_kernel(stacked, self.members[0].in_features)
        for member in self.members:
            member._in_kernel_layout = True
        offsets = torch.cat([scale_and_offset(m.scales, m.zeros) for m in self.members], dim=1)
        return Int4CpuKernel(stacked, offsets, self.members[0].group_size,
                             stacked_bias(self.members))

    def nbits_source(self) -> tuple[NBitsWeight, torch.Tensor | None]:
        """The members' weights stacked (:func:`stacked_source`) on :meth:`shared_codes`."""
        return stacked_source(self.members, self.shared_codes())

    def _portable_members(self) -> None:
        """Every member's ``qweight`` in sconce's own packing (a member may hold the ``torch``
        kernel's layout from an earlier kernel), without resetting this group."""
        for member in self.members:
            member.use_portable_layout(reset_group=False)

    def shared_codes(self) -> torch.Tensor:
        """All members' ``qweight`` rows as one tensor, whose row ranges *are* the members'
        ``qweight`` buffers: the first time (or after a member's buffer was replaced, as
        ``load_state_dict(assign=True)`` does) the codes are stacked once and each member
        keeps a view of its rows, so the kernel reads the layers' own memory and the model
        holds its codes once. A saved state dict of a ``MatMulNBits`` group keeps the sharing
        (``torch.save`` stores the storage once), so a loaded model needs no stacking; members
        on the ``torch`` kernel save converted copies, stacked again on the first call.

        Example:
            >>> from sconce_quant.modules import WeightOnlyLinear
            >>> group = SiblingGroup([WeightOnlyLinear(32, n, bits=4, group_size=16)
            ...                       for n in (8, 4)])
            >>> codes = group.shared_codes()
            >>> codes.shape, group.members[1].qweight.data_ptr() == codes[8].data_ptr()
            (torch.Size([12, 16]), True)
        """
        self._portable_members()
        stored = [member.qweight for member in self.members]
        first, rows = stored[0], sum(t.shape[0] for t in stored)
        offset = first.storage_offset()
        for tensor in stored:
            if (not tensor.is_contiguous() or tensor.shape[1:] != first.shape[1:]
                    or tensor.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                    or tensor.storage_offset() != offset):
                break
            offset += tensor.numel()
        else:
            return torch.as_strided(first, (rows, *first.shape[1:]), first.stride(),
                                    first.storage_offset())
        stacked = torch.cat(stored)
        for member, part in zip(self.members, torch.split(stacked, self.sizes), strict=True):
            member.qweight = part
        return stacked

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s output for ``x`` (computing every member's when ``x`` is new).
        The outputs are let go once every member took its own, so a large batch's outputs
        are not held after it."""
        with self._lock:
            if self._input is not x or self._version != x._version:
                out = self.kernel(x)
                self._outputs = tuple(part.contiguous() for part in
                                      torch.split(out, self.sizes, dim=-1))
                self._input, self._version, self._taken = x, x._version, set()
            output = self._outputs[index]
            self._taken.add(index)
            if len(self._taken) == len(self.members):
                self._input, self._outputs = None, ()
            return output

    def reset(self) -> None:
        """Forget the kernel and the cached outputs (a member's weights changed)."""
        with self._lock:
            self._kernel = None
            self._input, self._outputs = None, ()

    def names(self, model: nn.Module) -> list[str]:
        """The members' module names in ``model``."""
        where = {id(module): name for name, module in model.named_modules()}
        return [where[id(member)] for member in self.members]

    def __getstate__(self) -> dict[str, Any]:
        return {"members": self.members, "sizes": self.sizes, "shards": self.shards}

    def __setstate__(self, state: dict[str, Any]) -> None:  # copies: the members come along
        self.members, self.sizes, self.shards = state["members"], state["sizes"], state["shards"]
        self._kernel = None  # the members may not be whole yet: built on first use
        self._lock = threading.Lock()
        self._input, self._version, self._outputs = None, -1, ()
        self._taken = set()

    def __repr__(self) -> str:
        return f"SiblingGroup({len(self.members)} layers, {sum(self.sizes)} outputs)"


def stacked_source(members: list[WeightOnlyLinear], stored: torch.Tensor | None = None
                   ) -> tuple[NBitsWeight, torch.Tensor | None]:
    """The members' packed weights stacked row-wise, and their biases (zeros where a member
    has none), as :class:`~sconce_quant.lowbit.NBitsKernel` reads them.

    Args:
        members: layers of one format.
        stored: their ``qweight`` rows already stacked (:meth:`SiblingGroup.shared_codes`);
            by default they are concatenated into a new tensor.

    Example:
        >>> from sconce_quant.modules import WeightOnlyLinear
        >>> weight, bias = stacked_source([WeightOnlyLinear(32, n, bits=4, group_size=16)
        ...                                for n in (8, 4)])
        >>> weight.out_features, bias.shape
        (12, torch.Size([12]))
    """
    first = members[0]
    if stored is None:
        stored = torch.cat([member.qweight for member in members])
    weight = nbits_from_stored(
        stored, torch.cat([member.scales for member in members]),
        torch.cat([member.zeros for member in members]), in_features=first.in_features,
        bits=first.bits, block_size=first.group_size if first.group_size > 0
        else first.in_features)
    return weight, stacked_bias(members)


def stacked_bias(members: list[WeightOnlyLinear]) -> torch.Tensor | None:
    """The members' biases end to end (zeros where a member has none), or None if none has
    one."""
    if all(member.bias is None for member in members):
        return None
    return torch.cat([torch.zeros(member.out_features) if member.bias is None
                      else member.bias.detach().float() for member in members])


def find_siblings(model: nn.Module, run: Callable[[], Any],
                  layers: Iterable[WeightOnlyLinear]) -> list[list[str]]:
    """Names of the ``layers`` that read the same input tensor during ``run()``, in call
    order, grouped (groups of one are left out); only layers of one format and kernel are
    grouped.

    Example:
        >>> import torch
        >>> from sconce_quant.modules import WeightOnlyLinear
        >>> block = nn.ModuleDict({n: WeightOnlyLinear(16, 4, bits=4, group_size=16)
        ...                        for n in ("q", "k", "o")})
        >>> def run():
        ...     x = torch.randn(1, 16)
        ...     block["o"](block["q"](x).repeat(1, 4) + block["k"](x).repeat(1, 4))
        >>> find_siblings(block, run, list(block.values()))
        [['q', 'k']]
    """
    names = {id(module): name for name, module in model.named_modules()}
    seen: dict[tuple[int, ...], list[str]] = {}
    alive: list[torch.Tensor] = []  # keeps each input alive, so no id is reused

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            x = args[0]
            alive.append(x)
            key = (id(x), x._version, module.in_features, module.bits,
                   module.group_size, module.accuracy_level, module.kernel)
            group = seen.setdefault(key, [])  # type: ignore[arg-type]
            if names[id(module)] not in group:
                group.append(names[id(module)])

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
        alive.clear()
    groups = [group for group in seen.values() if len(group) > 1]
    claimed: set[str] = set()
    result = []
    for group in groups:  # a layer called on several shared inputs joins its first group
        free = [name for name in group if name not in claimed]
        if len(free) > 1:
            result.append(free)
            claimed.update(free)
    return result
