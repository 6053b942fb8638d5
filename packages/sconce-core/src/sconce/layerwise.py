"""Layer-wise calibration: each layer's input statistics, a solver per layer, in sequence.

One-shot compression methods (GPTQ, SparseGPT, OBC, Wanda) solve one layer at a time from
what that layer sees on calibration data: the Hessian of its layer-wise reconstruction error,
``H = 2/n * sum(x x^T)`` over the ``n`` input rows ``x`` (tokens for a ``Linear``, unfolded
patches for a ``Conv2d``). :func:`run_layerwise` drives that loop for any solver:

1. it captures each target layer's inputs on the calibration batches (through forward hooks,
   so the model runs the way the caller's ``forward`` runs it) and accumulates ``H`` in one
   ``(features x features)`` matrix per layer, never the inputs themselves;
2. it hands the statistics to ``solver`` (a callback), which compresses the layer in place
   (writes its quantized or pruned weight) and returns whatever it wants to keep;
3. it moves on in execution order, so later layers see the outputs of the already-compressed
   earlier ones.

Models built from repeated blocks (a transformer's ``nn.ModuleList`` of layers) are driven
block by block: the inputs of the first block are captured once, every block is run only on
the stored inputs of that block, and its outputs (computed after compression) become the next
block's inputs, so a pass never runs the whole model. Memory holds one block's inputs for the
calibration batches plus one Hessian per layer being solved. Other models are driven layer by
layer, each pass stopping right after the layer being measured.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> batches = [torch.randn(16, 4) for _ in range(2)]
    >>> def zero_small(layer: LayerInputs) -> float:
    ...     weight = layer.weight_matrix()
    ...     weight[weight.abs() < weight.abs().median()] = 0.0
    ...     layer.set_weight_matrix(weight)
    ...     return float(layer.hessian.trace())
    >>> results = run_layerwise(model, batches, zero_small)
    >>> sorted(results)
    ['0', '2']
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sconce.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["LayerInputs", "LayerSolver", "find_blocks", "input_rows", "run_layerwise",
           "supported_layer"]

Forward = Callable[[nn.Module, Any], Any]


@dataclass
class LayerInputs:
    """What one layer saw on the calibration data, handed to the solver.

    Attributes:
        name: the layer's qualified name in the model.
        module: the layer itself (``nn.Linear`` or ``nn.Conv2d``); the solver changes its
            weight in place.
        hessian: ``H = 2/n * sum(x x^T)``, float32, ``(features, features)``; the features are
            a ``Linear``'s inputs, or a ``Conv2d``'s unfolded patch (``C * kh * kw``, in the
            order of ``weight.flatten(1)``).
        count: ``n``, the input rows accumulated (tokens or output positions).

    Example:
        >>> layer = LayerInputs("fc", nn.Linear(3, 2), 2 * torch.eye(3), count=10)
        >>> layer.feature_sq_norms  # sum of x_j^2 over the rows, what Wanda weighs by
        tensor([10., 10., 10.])
    """

    name: str
    module: nn.Module
    hessian: torch.Tensor
    count: int

    @property
    def feature_sq_norms(self) -> torch.Tensor:
        """``sum(x_j^2)`` over the rows for each input feature ``j``."""
        return torch.diagonal(self.hessian) * (self.count / 2.0)

    def weight_matrix(self) -> torch.Tensor:
        """A float32 copy of the weight as ``(out_features, features)``, in the Hessian's order."""
        weight = cast(torch.Tensor, self.module.weight)
        return weight.detach().flatten(1).to(torch.float32).clone()

    def set_weight_matrix(self, matrix: torch.Tensor) -> None:
        """Write a ``(out_features, features)`` matrix back into the layer's weight."""
        weight = cast(torch.Tensor, self.module.weight)
        with torch.no_grad():
            weight.copy_(matrix.reshape(weight.shape).to(weight.dtype))


LayerSolver = Callable[[LayerInputs], Any]
"""Compresses one layer in place from its :class:`LayerInputs`; its return value is kept."""


def supported_layer(module: nn.Module) -> bool:
    """Whether :func:`run_layerwise` can measure ``module``: a Linear, or an ungrouped Conv2d.

    Example:
        >>> supported_layer(nn.Linear(2, 2)), supported_layer(nn.Conv2d(4, 4, 3, groups=4))
        (True, False)
    """
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros" and isinstance(module.padding, tuple))


def input_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``(n, features)``: tokens for Linear, patches for Conv2d.

    Example:
        >>> input_rows(nn.Conv2d(2, 3, 3, padding=1), torch.randn(1, 2, 4, 4)).shape
        torch.Size([16, 18])
    """
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1])
    if isinstance(module, nn.Conv2d):  # supported_layer: its padding is a tuple
        patches = F.unfold(inputs, module.kernel_size, dilation=module.dilation,
                           padding=cast(tuple[int, ...], module.padding), stride=module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise ConfigError(f"layer-wise statistics support Linear and Conv2d, not "
                      f"{type(module).__name__}")


@dataclass
class _Accumulator:
    """Running ``H = 2/n sum(x x^T)`` for one layer."""

    module: nn.Module
    hessian: torch.Tensor | None = None
    count: int = 0

    def add(self, inputs: torch.Tensor) -> None:
        rows = input_rows(self.module, inputs.detach()).to(torch.float32)
        new = rows.shape[0]
        if new == 0:
            return
        if self.hessian is None:
            self.hessian = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float32,
                                       device=rows.device)
        total = self.count + new
        self.hessian.mul_(self.count / total)
        self.hessian.addmm_(rows.t(), rows, alpha=2.0 / total)
        self.count = total


class _Stop(Exception):
    """Raised by a hook to end a forward pass early, once the measured layer has run."""


def _default_forward(model: nn.Module, inputs: Any) -> Any:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


@dataclass
class _Call:
    """The arguments one block was called with, for one calibration batch."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


def find_blocks(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the repeated blocks holding most ``targets``: the children of the
    ``nn.ModuleList`` of same-type modules that contains the most target layers.

    Example:
        >>> net = nn.Module(); net.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
        >>> find_blocks(net, ["layers.0", "layers.1", "layers.2"])
        ['layers.0', 'layers.1', 'layers.2']
    """
    best: list[str] = []
    best_hits = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        prefix = f"{name}." if name else ""
        names = [f"{prefix}{index}" for index in range(len(module))]
        hits = sum(any(t == n or t.startswith(n + ".") for n in names) for t in targets)
        if hits > best_hits:
            best, best_hits = names, hits
    return best


def run_layerwise(
    model: nn.Module,
    batches: Iterable[Any],
    solver: LayerSolver,
    *,
    targets: Sequence[str] | None = None,
    blocks: Sequence[str] | str | None = "auto",
    forward: Forward | None = None,
    sequential: bool = True,
) -> dict[str, Any]:
    """Solve each target layer from its calibration statistics, earlier layers first.

    Args:
        model: changed in place by the solver; run in eval mode without gradients.
        batches: calibration inputs (each what ``forward`` takes), already on the model's
            device. They are kept in memory for the passes.
        solver: called once per target layer with its :class:`LayerInputs`, after the layers
            before it were solved; it writes the compressed weight into the layer.
        targets: qualified names of the layers to solve (default: every Linear and ungrouped
            Conv2d).
        blocks: names of repeated blocks that run one after another, each taking the
            previous one's output as its first argument (a transformer's layers);
            ``"auto"`` finds them (:func:`find_blocks`), ``None`` drives layer by layer.
            Blocks that turn out not to chain that way fall back to layer by layer.
        forward: how to run the model on one batch (default ``model(*inputs)``); pass the
            adapter's ``forward`` so special models run as they should.
        sequential: within a block, re-measure each layer after the ones before it were
            solved (as across blocks); ``False`` measures a block's layers in one pass.

    Returns:
        ``{layer name: what the solver returned}``, in the order the layers were solved.

    Raises:
        DataError: ``batches`` is empty.
        ConfigError: a target is not a layer of the model, or not a supported layer.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
        >>> run_layerwise(model, [torch.randn(8, 3)], lambda layer: layer.count)
        {'0': 8, '1': 8}
    """
    batch_list = list(batches)
    if not batch_list:
        raise DataError("layer-wise calibration got no calibration batches; give a non-empty "
                        "'calibration' (or 'train') loader")
    forward = forward or _default_forward
    modules = dict(model.named_modules())
    if targets is None:
        names = [name for name, module in modules.items() if supported_layer(module)]
    else:
        names = list(targets)
        for name in names:
            if name not in modules:
                known = ", ".join(n for n, m in modules.items() if supported_layer(m))
                raise ConfigError(f"layer {name!r} is not in the model; layers it has: {known}")
            if not supported_layer(modules[name]):
                raise ConfigError(f"layer {name!r} is a {type(modules[name]).__name__}; "
                                  "layer-wise calibration supports Linear and ungrouped Conv2d")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            order, calls = _execution_order(model, batch_list[0], names, forward)
            unused = [n for n in names if n not in calls]
            if unused:
                logger.info("layers not run on the calibration data, skipped: %s", unused)
            driver = _Driver(model, modules, batch_list, solver, forward, sequential, calls)
            block_names = _resolve_blocks(model, blocks, order, forward, batch_list[0])
            if block_names:
                driver.run_blocks(order, block_names)
            else:
                driver.run_layers(order)
            return driver.results
    finally:
        model.train(was_training)


def _execution_order(model: nn.Module, batch: Any, names: Sequence[str], forward: Forward
                     ) -> tuple[list[str], dict[str, int]]:
    """Target names in the order they first run on ``batch``, and how often each runs."""
    modules = dict(model.named_modules())
    order: list[str] = []
    calls: dict[str, int] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name not in calls:
                order.append(name)
            calls[name] = calls.get(name, 0) + 1
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return order, calls


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def _resolve_blocks(model: nn.Module, blocks: Sequence[str] | str | None, order: list[str],
                    forward: Forward, batch: Any) -> list[str]:
    if blocks is None:
        return []
    if isinstance(blocks, str):
        if blocks != "auto":
            raise ConfigError(f"blocks must be 'auto', None or a list of module names, "
                              f"got {blocks!r}")
        names = find_blocks(model, order)
    else:
        names = list(blocks)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ConfigError(f"blocks {missing} are not modules of the model")
    if len(names) < 1 or not _blocks_chain(model, names, forward, batch):
        if names:
            logger.info("blocks %s do not run one after another on their outputs; "
                        "solving layer by layer", names[:3])
        return []
    return names


def _blocks_chain(model: nn.Module, names: list[str], forward: Forward, batch: Any) -> bool:
    """Whether each block runs once and takes the previous block's first output."""
    modules = dict(model.named_modules())
    seen: list[tuple[Any, Any]] = []
    handles = []
    for name in names:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            first_arg = args[0] if args else next(iter(kwargs.values()), None)
            seen.append((first_arg, _first(output)))
        handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))
    try:
        forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if len(seen) != len(names):
        return False
    for (_, out), (nxt, _) in itertools.pairwise(seen):
        if not (isinstance(out, torch.Tensor) and isinstance(nxt, torch.Tensor)):
            return False
        if out.shape != nxt.shape or not torch.equal(out, nxt):
            return False
    return True


class _Driver:
    """Runs the passes: accumulate, solve, propagate."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], batches: list[Any],
                 solver: LayerSolver, forward: Forward, sequential: bool,
                 calls: dict[str, int]) -> None:
        self.model = model
        self.modules = modules
        self.batches = batches
        self.solver = solver
        self.forward = forward
        self.sequential = sequential
        self.calls = calls
        self.results: dict[str, Any] = {}

    # --- shared -------------------------------------------------------------------------
    def _measure(self, names: Sequence[str], run: Callable[[], None], stop_after: str | None
                 ) -> dict[str, _Accumulator]:
        """Run ``run`` with hooks accumulating each layer's inputs; stop after ``stop_after``."""
        accumulators = {name: _Accumulator(self.modules[name]) for name in names}
        handles = []
        for name, acc in accumulators.items():
            def hook(module: nn.Module, args: Any, acc: _Accumulator = acc, name: str = name
                     ) -> None:
                acc.add(args[0])
                if name == stop_after:
                    raise _Stop
            handles.append(self.modules[name].register_forward_pre_hook(hook))
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return accumulators

    def _solve(self, name: str, acc: _Accumulator) -> None:
        if acc.hessian is None:
            logger.info("layer %s saw no inputs; skipped", name)
            return
        self.results[name] = self.solver(LayerInputs(name, acc.module, acc.hessian, acc.count))

    def _stop_after(self, name: str) -> str | None:
        return name if self.calls.get(name, 0) == 1 else None

    # --- layer by layer -------------------------------------------------------------------
    def run_layers(self, order: Sequence[str]) -> None:
        for name in order:
            stop = self._stop_after(name)

            def run() -> None:
                for batch in self.batches:
                    try:
                        self.forward(self.model, batch)
                    except _Stop:
                        pass
            accumulators = self._measure([name], run, stop)
            self._solve(name, accumulators[name])

    # --- block by block -------------------------------------------------------------------
    def run_blocks(self, order: Sequence[str], blocks: Sequence[str]) -> None:
        def inside(name: str, block: str) -> bool:
            return name.startswith(block + ".")

        first_block_layer = next((i for i, n in enumerate(order)
                                  if any(inside(n, b) for b in blocks)), len(order))
        before = [n for n in order[:first_block_layer] if not any(inside(n, b) for b in blocks)]
        after = [n for n in order[first_block_layer:] if not any(inside(n, b) for b in blocks)]
        self.run_layers(before)
        stored = self._capture(blocks[0])
        for block in blocks:
            module = self.modules[block]
            layers = [n for n in order if inside(n, block)]
            if self.sequential:
                for name in layers:
                    accumulators = self._measure(
                        [name], functools.partial(self._run_block, module, stored),
                        self._stop_after(name))
                    self._solve(name, accumulators[name])
            elif layers:
                accumulators = self._measure(
                    layers, functools.partial(self._run_block, module, stored), None)
                for name in layers:
                    self._solve(name, accumulators[name])
            stored = [_Call((_first(module(*call.args, **call.kwargs)), *call.args[1:]),
                            call.kwargs) for call in stored]
        self.run_layers(after)

    def _run_block(self, module: nn.Module, stored: list[_Call]) -> None:
        for call in stored:
            try:
                module(*call.args, **call.kwargs)
            except _Stop:
                pass

    def _capture(self, block: str) -> list[_Call]:
        """The arguments the first block gets for each batch (the rest of the model skipped)."""
        stored: list[_Call] = []

        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            stored.append(_Call(tuple(args), dict(kwargs)))
            raise _Stop

        handle = self.modules[block].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for batch in self.batches:
                try:
                    self.forward(self.model, batch)
                except _Stop:
                    pass
        finally:
            handle.remove()
        if not stored[0].args:
            # the block was called with keyword arguments only: move the first to args
            key = next(iter(stored[0].kwargs))
            stored = [_Call((c.kwargs[key],), {k: v for k, v in c.kwargs.items() if k != key})
                      for c in stored]
        return stored
