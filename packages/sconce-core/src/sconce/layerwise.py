"""Layer-wise calibration: each layer's input statistics, a solver per layer, in sequence.

One-shot compression methods (GPTQ, SparseGPT, OBC, Wanda) solve one layer at a time from
what that layer sees on calibration data: the Hessian of its layer-wise reconstruction error,
``H = 2/n * sum(x x^T)`` over the ``n`` input rows ``x`` (tokens for a ``Linear``, unfolded
patches for a ``Conv2d``). :func:`run_layerwise` drives that loop for any solver:

1. it captures each target layer's inputs on the calibration batches (through forward hooks,
   so the model runs the way the caller's ``forward`` runs it) and accumulates ``H`` in one
   ``(features x features)`` matrix per layer, never the inputs themselves
   (``statistics="diagonal"`` keeps only its diagonal, what Wanda needs);
2. layers that read the very same input tensor (a transformer's query/key/value projections,
   the gate and up projections of a LLaMA MLP) share one capture pass and one Hessian;
3. it hands the statistics to ``solver`` (a callback), which compresses the layer in place
   (writes its quantized or pruned weight) and returns whatever it wants to keep;
4. it moves on in execution order, so later layers see the outputs of the already-compressed
   earlier ones.

Calibration inputs that hold NaN or Inf make a :class:`~sconce.errors.DataError` naming the
layer that saw them.

Models built from repeated blocks (a transformer's ``nn.ModuleList`` of layers) are driven
block by block: the inputs of the first block are captured once, every block is run only on
the stored inputs of that block, and its outputs (computed after compression) replace them,
batch by batch, as the next block's inputs, so a pass never runs the whole model. Memory holds
one block's inputs for the calibration batches plus the Hessians being solved. Other models
are driven layer by layer, each pass stopping right after the layer being measured.

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

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sconce.errors import ConfigError, DataError, TechniqueError
from sconce.progress import track

logger = logging.getLogger(__name__)

__all__ = ["STATISTICS", "LayerInputs", "LayerSolver", "damped_inverse", "find_blocks",
           "input_rows", "run_layerwise", "supported_layer"]

Forward = Callable[[nn.Module, Any], Any]

STATISTICS: tuple[str, ...] = ("hessian", "diagonal")
"""What :func:`run_layerwise` accumulates: the full Hessian, or only its diagonal."""


@dataclass
class LayerInputs:
    """What one layer saw on the calibration data, handed to the solver.

    Attributes:
        name: the layer's qualified name in the model.
        module: the layer itself (``nn.Linear`` or ``nn.Conv2d``); the solver changes its
            weight in place.
        hessian: ``H = 2/n * sum(x x^T)``, float32, ``(features, features)``; the features are
            a ``Linear``'s inputs, or a ``Conv2d``'s unfolded patch (``C * kh * kw``, in the
            order of ``weight.flatten(1)``). With ``statistics="diagonal"`` only its diagonal
            is measured (the matrix is diagonal). Layers that read the same input share this
            tensor: treat it as read-only (clone it before changing it).
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


def damped_inverse(hessian: torch.Tensor, damp: float, *, cholesky: bool = False
                   ) -> torch.Tensor:
    """``(H + damp * mean(diag H) * I)^-1``, or its upper Cholesky factor ``U`` (``U^T U`` is
    the inverse), as second-order solvers (GPTQ, SparseGPT, OBC) use it. Features that never
    saw an input (a zero diagonal) get a diagonal of 1 first; the dampening is raised tenfold,
    up to three times, until ``H`` is positive definite.

    Raises:
        TechniqueError: ``H`` is not positive definite even then.

    Example:
        >>> torch.diagonal(damped_inverse(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), 0.0))
        tensor([0.5000, 1.0000])
    """
    h = hessian.detach().to(torch.float32).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for factor in (1.0, 10.0, 100.0, 1000.0):
        lower, info = torch.linalg.cholesky_ex(h + (damp * factor * mean_diag + 1e-8) * eye)
        if int(info) != 0:
            continue
        # cholesky_solve against I, not cholesky_inverse: the same result, many times faster
        # on CPU (1536 x 1536: 0.56 s instead of 18.6 s, measured on this project's machines)
        inverse = torch.cholesky_solve(eye, lower)
        if not cholesky:
            return inverse
        upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
        if int(info) == 0:
            return upper
    raise TechniqueError("a layer's Hessian is not positive definite even with strong "
                         "dampening; give more (or more varied) calibration data")


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


def _row_kind(module: nn.Module) -> tuple[Any, ...]:
    """Layers with equal kinds turn the same input into the same rows."""
    if isinstance(module, nn.Conv2d):
        return ("conv2d", module.kernel_size, module.stride, module.padding, module.dilation)
    return ("linear",)


@dataclass
class _Accumulator:
    """Running ``H = 2/n sum(x x^T)`` (or its diagonal) for one layer or a sharing group."""

    module: nn.Module
    diagonal: bool = False
    hessian: torch.Tensor | None = None
    count: int = 0

    def add(self, inputs: torch.Tensor) -> None:
        rows = input_rows(self.module, inputs.detach()).to(torch.float32)
        new = rows.shape[0]
        if new == 0:
            return
        if self.hessian is None:
            shape = (rows.shape[1],) if self.diagonal else (rows.shape[1], rows.shape[1])
            self.hessian = torch.zeros(shape, dtype=torch.float32, device=rows.device)
        total = self.count + new
        self.hessian.mul_(self.count / total)
        if self.diagonal:
            self.hessian.add_(rows.square().sum(dim=0), alpha=2.0 / total)
        else:
            self.hessian.addmm_(rows.t(), rows, alpha=2.0 / total)
        self.count = total

    def matrix(self) -> torch.Tensor | None:
        """The Hessian as a ``(features, features)`` matrix (diagonal ones expanded)."""
        if self.hessian is None or not self.diagonal:
            return self.hessian
        return torch.diag(self.hessian)


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
    statistics: str = "hessian",
    share_inputs: bool = True,
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
        sequential: within a block, re-measure each layer (or group of layers sharing an
            input) after the ones before it were solved, as across blocks; ``False``
            measures a block's layers in one pass (faster; what SparseGPT's reference does).
        statistics: ``"hessian"`` (the full matrix) or ``"diagonal"`` (only ``sum x_j^2``,
            much cheaper for wide layers; ``LayerInputs.hessian`` is then diagonal).
        share_inputs: layers that run once per forward on the very same input tensor share
            one capture and one Hessian (identical to measuring them apart, and faster).

    Returns:
        ``{layer name: what the solver returned}``, in the order the layers were solved.

    Raises:
        DataError: ``batches`` is empty, or a layer's calibration inputs hold NaN or Inf.
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
    if statistics not in STATISTICS:
        raise ConfigError(f"statistics must be one of {', '.join(map(repr, STATISTICS))}; "
                          f"got {statistics!r}")
    forward = forward or _default_forward
    modules = dict(model.named_modules())
    names = _check_targets(modules, targets)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = _one_sample(batch_list[0])
            plan = _probe(model, probe, names, forward)
            unused = [n for n in names if n not in plan.calls]
            if unused:
                logger.info("layers not run on the calibration data, skipped: %s", unused)
            units = plan.units(modules, share_inputs)
            driver = _Driver(model, modules, batch_list, solver, forward, sequential,
                             plan.calls, statistics == "diagonal")
            block_names = _resolve_blocks(model, blocks, plan.order, forward, probe)
            if block_names:
                driver.run_blocks(units, block_names)
            else:
                driver.run_layers(units)
            return driver.results
    finally:
        model.train(was_training)


def _check_targets(modules: dict[str, nn.Module], targets: Sequence[str] | None) -> list[str]:
    if targets is None:
        return [name for name, module in modules.items() if supported_layer(module)]
    names = list(targets)
    for name in names:
        if name not in modules:
            known = ", ".join(n for n, m in modules.items() if supported_layer(m))
            raise ConfigError(f"layer {name!r} is not in the model; layers it has: {known}")
        if not supported_layer(modules[name]):
            raise ConfigError(f"layer {name!r} is a {type(modules[name]).__name__}; "
                              "layer-wise calibration supports Linear and ungrouped Conv2d")
    return names


def _one_sample(batch: Any) -> Any:
    """The first sample of a batch (tensors sharing their first dimension), for the probe
    passes that only learn the model's structure; the batch itself when that is unclear."""
    tensors = batch if isinstance(batch, tuple) else (batch,)
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        return batch
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1 or sizes.pop() < 2:
        return batch
    sliced = tuple(t[:1] for t in tensors)
    return sliced if isinstance(batch, tuple) else sliced[0]


@dataclass
class _Plan:
    """What the probe pass learned: execution order, calls per forward, shared inputs."""

    order: list[str]
    calls: dict[str, int]
    inputs: dict[str, Any]

    def units(self, modules: dict[str, nn.Module], share: bool) -> list[list[str]]:
        """The targets in execution order, grouped where they read the same input once."""
        units: list[list[str]] = []
        for name in self.order:
            home = None
            if share and self.calls[name] == 1 and isinstance(self.inputs[name], torch.Tensor):
                home = next((unit for unit in units
                             if self.calls[unit[0]] == 1
                             and self.inputs[unit[0]] is self.inputs[name]
                             and _row_kind(modules[unit[0]]) == _row_kind(modules[name])),
                            None)
            if home is not None:
                home.append(name)
            else:
                units.append([name])
        return units


def _probe(model: nn.Module, batch: Any, names: Sequence[str], forward: Forward) -> _Plan:
    """Run ``batch`` once, recording the order targets first run in, how often each runs,
    and the tensor each first reads (kept alive, so identical objects mean a shared input)."""
    modules = dict(model.named_modules())
    plan = _Plan([], {}, {})

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if name not in plan.calls:
                plan.order.append(name)
                plan.inputs[name] = args[0] if args else None
            plan.calls[name] = plan.calls.get(name, 0) + 1
        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in names]
    try:
        forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return plan


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
    """Runs the passes: accumulate, solve, propagate.

    A *unit* is a list of target names measured together: one layer, or layers that read
    the same input (they share one accumulator, hooked on the first of them).
    """

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], batches: list[Any],
                 solver: LayerSolver, forward: Forward, sequential: bool,
                 calls: dict[str, int], diagonal: bool) -> None:
        self.model = model
        self.modules = modules
        self.batches = batches
        self.solver = solver
        self.forward = forward
        self.sequential = sequential
        self.calls = calls
        self.diagonal = diagonal
        self.results: dict[str, Any] = {}

    # --- shared -------------------------------------------------------------------------
    def _measure(self, units: Sequence[list[str]], run: Callable[[], None]
                 ) -> list[_Accumulator]:
        """Run ``run`` with hooks accumulating each unit's inputs; the pass stops once the
        last unit has been measured, when every unit runs once per forward."""
        accumulators = [_Accumulator(self.modules[unit[0]], self.diagonal) for unit in units]
        once = all(self.calls.get(unit[0], 0) == 1 for unit in units)
        last = units[-1][0] if units and once else None
        handles = []
        for unit, acc in zip(units, accumulators, strict=True):
            def hook(module: nn.Module, args: Any, acc: _Accumulator = acc,
                     name: str = unit[0]) -> None:
                acc.add(args[0])
                if name == last:
                    raise _Stop
            handles.append(self.modules[unit[0]].register_forward_pre_hook(hook))
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return accumulators

    def _solve(self, unit: list[str], acc: _Accumulator) -> None:
        hessian = acc.matrix()
        if hessian is None:
            logger.info("layer(s) %s saw no inputs; skipped", ", ".join(unit))
            return
        if not bool(torch.isfinite(hessian).all()):
            names = " / ".join(repr(n) for n in unit)
            raise DataError(f"the calibration inputs of layer {names} hold NaN or Inf; check "
                            "the calibration data and the layers before it (an overflow in "
                            "half precision?)")
        for name in unit:
            self.results[name] = self.solver(
                LayerInputs(name, self.modules[name], hessian, acc.count))

    def _run_model(self) -> None:
        for batch in self.batches:
            try:
                self.forward(self.model, batch)
            except _Stop:
                pass

    # --- layer by layer -------------------------------------------------------------------
    def run_layers(self, units: Sequence[list[str]]) -> None:
        for unit in track(units, description="layer-wise calibration"):
            (acc,) = self._measure([unit], self._run_model)
            self._solve(unit, acc)

    # --- block by block -------------------------------------------------------------------
    def run_blocks(self, units: Sequence[list[str]], blocks: Sequence[str]) -> None:
        def home(unit: list[str]) -> str | None:
            return next((b for b in blocks if unit[0].startswith(b + ".")), None)

        first = next((i for i, u in enumerate(units) if home(u) is not None), len(units))
        self.run_layers([u for u in units[:first] if home(u) is None])
        stored = self._capture(blocks[0])
        for block in track(blocks, description="layer-wise calibration, block by block"):
            module = self.modules[block]
            inside = [u for u in units if home(u) == block]

            def run(module: nn.Module = module) -> None:
                self._run_block(module, stored)

            if self.sequential:
                for unit in inside:
                    (acc,) = self._measure([unit], run)
                    self._solve(unit, acc)
            elif inside:
                for unit, acc in zip(inside, self._measure(inside, run), strict=True):
                    self._solve(unit, acc)
            for call in stored:  # outputs replace inputs one batch at a time
                call.args = (_first(module(*call.args, **call.kwargs)), *call.args[1:])
        self.run_layers([u for u in units[first:] if home(u) is None])

    @staticmethod
    def _run_block(module: nn.Module, stored: list[_Call]) -> None:
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
            self._run_model()
        finally:
            handle.remove()
        if not stored[0].args:
            # the block was called with keyword arguments only: move the first to args
            key = next(iter(stored[0].kwargs))
            stored = [_Call((c.kwargs[key],), {k: v for k, v in c.kwargs.items() if k != key})
                      for c in stored]
        return stored
