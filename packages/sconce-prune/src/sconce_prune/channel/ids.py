"""Channel variables, their coupling (union-find) and how tensors carry them.

Every prunable channel is a *variable* (an integer id). A tensor in the traced graph carries,
for the axes whose positions are channels, an integer array of variable ids: a conv output
carries fresh ids on axis 1, a flatten repeats them, a concat concatenates them, a residual
add *unites* the ids of its two operands position by position (they must be removed
together). Two positions holding the same (united) variable are removed together.

Example:
    >>> space = VariableSpace()
    >>> a, b = space.new(3), space.new(3)
    >>> space.unite(a, b)
    >>> bool(space.find(a[0]) == space.find(b[0]))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class VariableSpace:
    """Channel variables with union-find coupling and a frozen (never removed) flag.

    Example:
        >>> space = VariableSpace()
        >>> ids = space.new(2)
        >>> space.freeze(ids[:1], "model output")
        >>> space.is_frozen(ids[0]), space.is_frozen(ids[1])
        (True, False)
    """

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._frozen: dict[int, str] = {}
        self._root_cache: np.ndarray | None = None
        self.version = 0
        """Changes whenever variables are added, coupled or frozen (for caches)."""

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, count: int) -> np.ndarray:
        """``count`` fresh, independent variables."""
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        self._root_cache = None
        self.version += 1
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, var: int) -> int:
        """The representative of ``var``'s coupled set."""
        parent = self._parent
        root = int(var)
        while parent[root] != root:
            root = parent[root]
        node = int(var)
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        """The representative of every id in ``ids`` (same shape), vectorised."""
        if self._root_cache is None:
            parent = np.asarray(self._parent, dtype=np.int64)
            while True:
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand
            self._root_cache = parent
        return self._root_cache[np.asarray(ids, dtype=np.int64)]

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple ``a[i]`` with ``b[i]`` for every position (same shapes)."""
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"cannot couple {a.shape} ids with {b.shape} ids")
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx == ry:
                continue
            if ry < rx:
                rx, ry = ry, rx
            self._parent[ry] = rx
            self._root_cache = None
            self.version += 1
            reason = self._frozen.pop(ry, None)
            if reason is not None:
                self._frozen.setdefault(rx, reason)

    def unite_all(self, ids: np.ndarray) -> None:
        """Couple every id in ``ids`` into one variable."""
        flat = np.asarray(ids).reshape(-1)
        if flat.size > 1:
            self.unite(flat[1:], np.full(flat.size - 1, flat[0]))

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        """Mark the variables of ``ids`` as never removed (``reason`` says why)."""
        for var in np.asarray(ids).reshape(-1).tolist():
            self._frozen.setdefault(self.find(var), reason)
        self.version += 1

    def is_frozen(self, var: int) -> bool:
        """Whether ``var``'s coupled set may not be removed."""
        return self.find(var) in self._frozen

    def frozen_mask(self, roots: np.ndarray) -> np.ndarray:
        """Boolean array: whether each of ``roots`` (root variables) is frozen."""
        if not self._frozen:
            return np.zeros(len(roots), dtype=bool)
        frozen_roots = np.fromiter((self.find(v) for v in self._frozen), dtype=np.int64)
        return np.isin(np.asarray(roots, dtype=np.int64), frozen_roots)

    def frozen_reasons(self) -> list[str]:
        """The reason of every frozen coupled set."""
        return [r for root, r in self._frozen.items() if self.find(root) == root]

    def frozen_reason(self, var: int) -> str | None:
        """Why ``var`` is frozen, or None."""
        return self._frozen.get(self.find(var))


@dataclass
class ChannelMap:
    """Variable ids laid over some axes of a tensor: ``ids.shape == [shape[a] for a in axes]``.

    Example:
        >>> ChannelMap((1,), np.arange(4)).ids.shape
        (4,)
    """

    axes: tuple[int, ...]
    ids: np.ndarray

    def moved(self, mapping: dict[int, int]) -> ChannelMap:
        """The same ids on renumbered axes (``mapping`` old axis -> new axis), axes sorted."""
        new_axes = [mapping[a] for a in self.axes]
        order = np.argsort(new_axes)
        return ChannelMap(tuple(new_axes[i] for i in order),
                          np.transpose(self.ids, order) if len(order) > 1 else self.ids)

    def simplified(self) -> ChannelMap | None:
        """Drop axes along which the ids do not vary; None when no axis is left."""
        ids, axes = self.ids, list(self.axes)
        position = 0
        while position < len(axes):
            if ids.shape[position] == 1 or _constant_along(ids, position):
                ids = np.take(ids, 0, axis=position)
                del axes[position]
            else:
                position += 1
        if not axes:
            return None
        return ChannelMap(tuple(axes), ids)


def _constant_along(ids: np.ndarray, axis: int) -> bool:
    first = np.take(ids, [0], axis=axis)
    return bool((ids == first).all())


@dataclass
class ParamRef:
    """A parameter or buffer used directly in the graph (``self.cls_token``).

    ``axes[i]`` is the parameter axis that the value's axis ``i`` shows (None for an axis
    the value added). Pruning registers slots on the parameter when the value meets
    channel ids elementwise.
    """

    module: str
    name: str
    axes: tuple[int | None, ...]


@dataclass
class TensorInfo:
    """What the analysis knows about one tensor value: its shape and its channel maps."""

    shape: tuple[int, ...]
    maps: list[ChannelMap] = field(default_factory=list)
    param: ParamRef | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def map_on(self, axis: int) -> ChannelMap | None:
        """The map covering ``axis``, if any."""
        return next((m for m in self.maps if axis in m.axes), None)
