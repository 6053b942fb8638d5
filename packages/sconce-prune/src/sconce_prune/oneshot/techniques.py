"""``prune.sparsegpt``, ``prune.obc`` and ``prune.wanda``: one-shot pruning from calibration
data, layer by layer, through the core's layer-wise driver.

Each technique picks its layers (:mod:`~sconce_prune.oneshot.layers`), runs the calibration
inputs through the model with :func:`sconce.layerwise.run_layerwise` (block by block for a
transformer, so later layers see the already-pruned earlier ones) and prunes each layer from
what it saw. No fine-tuning is needed; the pipeline still fine-tunes afterwards when the run
asks for it (``finetune_epochs``), holding the zeros.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import sconce
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
    ...                       nn.Linear(32, 4))
    >>> loader = DataLoader(TensorDataset(torch.randn(64, 16), torch.zeros(64).long()),
    ...                     batch_size=16)
    >>> ctx = sconce.Context(data=sconce.Data(train=loader, test=loader))
    >>> pruned = SparseGPT().apply(model, SparseGPTConfig(sparsity=0.5), ctx)
    >>> float((pruned[2].weight == 0).float().mean()), ctx.stage.notes["skipped layers"]
    (0.5, '0, 4')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from sconce.errors import ConfigError, DataError, TechniqueError
from sconce.layerwise import LayerInputs, run_layerwise
from sconce.lowbit import GroupCodes, LowBitLinear
from sconce.technique import Technique
from sconce_prune.allocation import note_result
from sconce_prune.oneshot.config import OBCConfig, OneShotConfig, SparseGPTConfig, WandaConfig
from sconce_prune.oneshot.layers import choose_layers
from sconce_prune.oneshot.obc import obc_prune
from sconce_prune.oneshot.sparsegpt import SparseGPTSettings, sparsegpt_prune
from sconce_prune.oneshot.wanda import wanda_prune
from sconce_prune.targets import Target

if TYPE_CHECKING:
    from sconce import Context

logger = logging.getLogger(__name__)

__all__ = ["OBC", "SparseGPT", "Wanda"]

Solve = Callable[[torch.Tensor, torch.Tensor, LayerInputs], tuple[torch.Tensor, Any]]
"""``(weight matrix, hessian, layer) -> (pruned weight matrix, what to keep)``."""


def _input_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    return int(cast(nn.Linear, module).in_features)


def _channels_last(module: nn.Module) -> torch.Tensor | None:
    """For a Conv2d, the column order that puts input channels innermost (N:M groups run
    along input channels at each kernel position, as 2:4 kernels expect); None for Linear."""
    if not isinstance(module, nn.Conv2d):
        return None
    channels = module.in_channels
    positions = module.weight.shape[2] * module.weight.shape[3]
    return torch.arange(channels * positions).reshape(channels, positions).t().reshape(-1)


def calibration_batches(ctx: Context, samples: int, technique: str, device: Any) -> list[Any]:
    """The calibration inputs (up to ``samples``), on ``device``, as a list.

    Raises:
        DataError: there is no data, or the calibration split yields nothing.

    Example:
        >>> from sconce import Context
        >>> calibration_batches(Context(), 8, "prune.wanda", "cpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sconce.errors.DataError: prune.wanda needs calibration data: pass data= with a ...
    """
    if ctx.data is None:
        raise DataError(f"{technique} needs calibration data: pass data= with a 'calibration' "
                        "(or 'train') loader")
    try:
        return [ctx.adapter.to_device(batch, device)
                for batch in ctx.calibration_inputs(samples)]
    except DataError as exc:
        raise DataError(f"{technique} needs calibration data: {exc}") from None


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class OneShotPruning(Technique):
    """Shared by the one-shot pruners: layers, calibration, the layer-wise pass, notes."""

    kind = "prune"
    statistics: ClassVar[str] = "hessian"

    def solver(self, config: Any) -> Solve:
        """How this technique prunes one layer's weight matrix."""
        raise NotImplementedError

    def check_layer(self, name: str, module: nn.Module, config: Any) -> None:
        """Refuse a layer this technique cannot solve (with a one-line ConfigError)."""

    def apply(self, model: nn.Module, config: OneShotConfig, ctx: Context) -> nn.Module:
        names, left = choose_layers(model, config.layers, config.skip_layers)
        modules = dict(model.named_modules())
        misfits = [n for n in names if config.m and _input_channels(modules[n]) % config.m]
        names = [n for n in names if n not in misfits]
        if not names:
            raise TechniqueError(f"no chosen layer has an input count divisible by m={config.m} "
                                 f"({', '.join(misfits[:5])}); choose a smaller m")
        for name in names:
            self.check_layer(name, modules[name], config)
        batches = calibration_batches(ctx, config.calibration_samples, self.name,
                                      _device(model))
        solve = self.solver(config)

        def layer_solver(layer: LayerInputs) -> Any:
            weight, hessian = layer.weight_matrix(), layer.hessian
            order = _channels_last(layer.module) if config.m else None
            if order is not None:
                weight, hessian = weight[:, order], hessian[order][:, order]
            pruned, kept = solve(weight, hessian, layer)
            if order is not None:
                pruned = pruned[:, torch.argsort(order)]
            layer.set_weight_matrix(pruned)
            return kept

        started = time.perf_counter()
        results = run_layerwise(model, batches, layer_solver, targets=names,
                                forward=ctx.adapter.forward, sequential=config.sequential,
                                statistics=self.statistics)
        seconds = time.perf_counter() - started
        ctx.note("pattern", config.pattern)
        ctx.note("calibration", f"{sum(_count(b) for b in batches)} samples, "
                 f"{'sequential' if config.sequential else 'one pass'} per block, "
                 f"{seconds:.1f} s")
        if misfits:
            ctx.note("not N:M (input count not a multiple of m)", ", ".join(misfits))
        note_result(ctx, [Target(n, modules[n], "weight", 1) for n in results],
                    [Target(n, modules[n], "weight", 1) for n in [*left, *misfits]])
        self.finish(model, results, config, ctx)
        return model

    def finish(self, model: nn.Module, results: dict[str, Any], config: Any,
               ctx: Context) -> None:
        """After every layer is pruned (SparseGPT stores its quantized layers here)."""


def _count(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


class Wanda(OneShotPruning):
    """Wanda: prune the weights with the least |W|·‖X‖ in each output row (no update).

    Example:
        >>> Wanda().name, Wanda().statistics
        ('prune.wanda', 'diagonal')
    """

    name = "prune.wanda"
    Config = WandaConfig
    statistics = "diagonal"

    def solver(self, config: WandaConfig) -> Solve:
        def solve(weight: torch.Tensor, hessian: torch.Tensor, layer: LayerInputs
                  ) -> tuple[torch.Tensor, Any]:
            norms = torch.diagonal(hessian) * (layer.count / 2.0)
            return wanda_prune(weight, norms, sparsity=float(config.sparsity or 0.0),
                               n=config.n, m=config.m), None
        return solve


class SparseGPT(OneShotPruning):
    """SparseGPT: OBS reconstruction with the inverse Hessian; optionally with int4/int8.

    Example:
        >>> SparseGPT().name
        'prune.sparsegpt'
    """

    name = "prune.sparsegpt"
    Config = SparseGPTConfig

    def check_layer(self, name: str, module: nn.Module, config: SparseGPTConfig) -> None:
        if config.bits is not None and not isinstance(module, nn.Linear):
            raise ConfigError(f"prune.sparsegpt with bits={config.bits} quantizes Linear "
                              f"layers only, and {name!r} is a {type(module).__name__}; "
                              "leave it out (skip_layers) or leave bits out")

    def solver(self, config: SparseGPTConfig) -> Solve:
        settings = SparseGPTSettings(
            sparsity=float(config.sparsity or 0.0), n=config.n, m=config.m,
            block_size=config.block_size, damp=config.damp, bits=config.bits,
            group_size=config.group_size, symmetric=config.symmetric,
            clip_search=config.clip_search)

        def solve(weight: torch.Tensor, hessian: torch.Tensor, layer: LayerInputs
                  ) -> tuple[torch.Tensor, Any]:
            result = sparsegpt_prune(weight, hessian, settings)
            return result.weight, result.codes
        return solve

    def finish(self, model: nn.Module, results: dict[str, Any], config: SparseGPTConfig,
               ctx: Context) -> None:
        if config.bits is None:
            return
        layers = {}
        for name, codes in results.items():
            if not isinstance(codes, GroupCodes):
                continue
            linear = cast(nn.Linear, model.get_submodule(name))
            low = LowBitLinear.from_codes(codes, linear.bias).to(linear.weight.device)
            model.set_submodule(name, low)
            layers[name] = {"in": low.in_features, "out": low.out_features,
                            "bias": low.bias is not None, "bits": low.bits,
                            "group_size": low.group_size}
        ctx.set_restore_record({"layers": layers})
        ctx.note("quantized", f"{len(layers)} Linear layer(s) to int{config.bits} jointly "
                 f"with pruning (groups of {config.group_size}, "
                 f"{'symmetric' if config.symmetric else 'asymmetric'}"
                 f"{', ranges searched' if config.clip_search else ''}); "
                 "dequantized on the fly")

    def restore(self, model: nn.Module, config: SparseGPTConfig, record: dict[str, Any]
                ) -> nn.Module:
        """Put empty :class:`~sconce.lowbit.LowBitLinear` layers where the saved model has
        them (only with ``bits``)."""
        for name, shape in record.get("layers", {}).items():
            model.set_submodule(name, LowBitLinear(
                shape["in"], shape["out"], bits=shape["bits"], group_size=shape["group_size"],
                bias=shape["bias"]))
        return model


class OBC(OneShotPruning):
    """OBC (ExactOBS): exact greedy OBS pruning, row by row, for small layers.

    Example:
        >>> OBC().name
        'prune.obc'
    """

    name = "prune.obc"
    Config = OBCConfig

    def check_layer(self, name: str, module: nn.Module, config: OBCConfig) -> None:
        columns = cast(torch.Tensor, module.weight)[0].numel()
        if columns > config.max_columns:
            raise ConfigError(
                f"prune.obc solves each row exactly in O(inputs^3) and layer {name!r} has "
                f"{columns} inputs (max_columns={config.max_columns}); use prune.sparsegpt "
                "for layers this large, or skip this one")

    def solver(self, config: OBCConfig) -> Solve:
        def solve(weight: torch.Tensor, hessian: torch.Tensor, layer: LayerInputs
                  ) -> tuple[torch.Tensor, Any]:
            return obc_prune(weight, hessian, sparsity=float(config.sparsity or 0.0),
                             n=config.n, m=config.m, damp=config.damp), None
        return solve
