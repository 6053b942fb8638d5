"""``quant.weight_only``: int8 / int4 group-wise weights for Linear layers, by RTN or GPTQ.

Round-to-nearest (``rtn``) needs no data; ``gptq`` calibrates each layer on real inputs
through the core's layer-wise driver (:func:`sconce.layerwise.run_layerwise`), block by block
for transformer stacks, so later layers are solved on the outputs of the already-quantized
earlier ones. Layers become :class:`~sconce_quant.modules.WeightOnlyLinear` (int4 packed two
per byte), dequantized on the fly at run time. Linear layers whose weight is shared with
another module (a language model's head tied to its embedding) are left alone.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce.context import Context
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> ctx = Context.for_inputs(torch.randn(1, 64))
    >>> quantized = WeightOnly().apply(model, WeightOnlyConfig(method="rtn", group_size=32), ctx)
    >>> type(quantized[0]).__name__, quantized[0].bits
    ('WeightOnlyLinear', 4)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from sconce.config import QuantizeConfig, check_choice, check_positive, check_range
from sconce.context import Context
from sconce.layerwise import LayerInputs, run_layerwise
from sconce.technique import Technique
from sconce_quant.gptq import GPTQSettings, gptq_quantize
from sconce_quant.modules import WeightOnlyLinear
from sconce_quant.qparams import GroupCodes, rtn_group_codes
from sconce_quant.static import calibration_batches

logger = logging.getLogger(__name__)


@dataclass
class WeightOnlyConfig(QuantizeConfig):
    """Settings of ``quant.weight_only``.

    Attributes:
        bits: 4 (packed two per byte) or 8.
        method: ``gptq`` (calibrated, error-correcting) or ``rtn`` (round to nearest, no data).
        group_size: inputs sharing one scale and zero point (0: one group per row).
        symmetric: zero point fixed at the middle code (else each group's min/max).
        damp: GPTQ's Hessian dampening (fraction of the mean diagonal).
        act_order: GPTQ quantizes the columns with the largest inputs first (group ranges
            fixed beforehand); on by default: SmolLM2-135M int4 g128 perplexity 26.5 -> 25.4.
        clip_search: each group's range is the one with the least rounding error (it may
            clip outliers) instead of its min/max. None (default): on for GPTQ, whose error
            feedback makes up for the clipped weights, off for RTN, where clipping without
            feedback cost perplexity (SmolLM2-135M int4 g128: 29.6 -> 34.0).
        calibration_samples: calibration inputs for GPTQ.
        skip: Linear layers (module names) to leave in float.

    Example:
        >>> WeightOnlyConfig(bits=8, method="rtn").gptq().bits
        8
    """

    bits: int = 4
    method: str = "gptq"
    group_size: int = 128
    symmetric: bool = False
    damp: float = 0.01
    act_order: bool = True
    clip_search: bool | None = None
    calibration_samples: int = 128
    skip: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        check_choice("bits", self.bits, (4, 8))
        check_choice("method", self.method, ("gptq", "rtn"))
        check_positive("group_size", self.group_size, allow_zero=True)
        check_range("damp", self.damp, 0.0, 1.0, low_inclusive=False)
        check_positive("calibration_samples", self.calibration_samples)

    def gptq(self) -> GPTQSettings:
        """GPTQ's settings from this config."""
        return GPTQSettings(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric,
                            damp=self.damp, act_order=self.act_order,
                            clip_search=self.searches())

    def searches(self) -> bool:
        """Whether group ranges are searched (``clip_search`` resolved for ``method``).

        Example:
            >>> WeightOnlyConfig(method="rtn").searches(), WeightOnlyConfig().searches()
            (False, True)
        """
        return self.method == "gptq" if self.clip_search is None else bool(self.clip_search)


def target_layers(model: nn.Module, skip: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Linear layers to quantize, and those left alone because their weight is shared.

    Example:
        >>> emb = nn.Embedding(10, 4); head = nn.Linear(4, 10, bias=False)
        >>> head.weight = emb.weight
        >>> target_layers(nn.ModuleDict({"emb": emb, "head": head, "fc": nn.Linear(4, 4)}), ())
        (['fc'], ['head'])
    """
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    targets, tied = [], []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or name in skip:
            continue
        (tied if owners.get(id(module.weight), 0) > 1 else targets).append(name)
    return targets, tied


class WeightOnly(Technique):
    """Weight-only int8/int4 for Linear layers (group-wise scales; RTN or GPTQ).

    Example:
        >>> WeightOnly().name
        'quant.weight_only'
    """

    name = "quant.weight_only"
    kind = "quantize"
    Config = WeightOnlyConfig

    def apply(self, model: nn.Module, config: WeightOnlyConfig, ctx: Context) -> nn.Module:
        targets, tied = target_layers(model, config.skip)
        if config.method == "rtn":
            def rtn(name: str) -> GroupCodes:
                return rtn_group_codes(model.get_submodule(name).weight.detach(), config.bits,
                                       config.group_size, symmetric=config.symmetric,
                                       search=config.searches())

            record = self._swap(model, targets, rtn)
        else:
            batches = calibration_batches(ctx, config.calibration_samples, self.name)
            batches = [ctx.adapter.to_device(b, _device(model)) for b in batches]
            settings = config.gptq()

            def solve(layer: LayerInputs) -> GroupCodes:
                result = gptq_quantize(layer.weight_matrix(), layer.hessian, settings)
                layer.set_weight_matrix(result.dequantize())
                return result

            codes = run_layerwise(model, batches, solve, targets=targets,
                                  forward=ctx.adapter.forward)
            record = self._swap(model, list(codes), codes.pop)
        ctx.set_restore_record(record)
        group = "per row" if config.group_size <= 0 else f"groups of {config.group_size}"
        ctx.note("weight-only", f"{len(record['layers'])} Linear layer(s) to int{config.bits} "
                 f"({config.method.upper()}, {group}, "
                 f"{'symmetric' if config.symmetric else 'asymmetric'}"
                 f"{', ranges searched' if config.searches() else ''}); "
                 "dequantized on the fly")
        if tied:
            ctx.note("left in float (weight shared with another module)", ", ".join(tied))
        return model

    def restore(self, model: nn.Module, config: WeightOnlyConfig, record: dict[str, Any]
                ) -> nn.Module:
        """Put empty :class:`WeightOnlyLinear` layers where the saved model has them."""
        for name, shape in record["layers"].items():
            layer = WeightOnlyLinear(shape["in"], shape["out"], bits=shape["bits"],
                                     group_size=shape["group_size"], bias=shape["bias"])
            model.set_submodule(name, layer)
        return model

    @staticmethod
    def _swap(model: nn.Module, names: Sequence[str], code_for: Callable[[str], GroupCodes]
              ) -> dict[str, Any]:
        """Replace each Linear by its packed layer, one at a time (``code_for(name)`` gives its
        codes), so the float weight and the unpacked codes of only one layer are alive
        besides the model."""
        layers = {}
        for name in names:
            code = code_for(name)
            linear = model.get_submodule(name)
            layer = WeightOnlyLinear.from_codes(code, linear.bias).to(linear.weight.device)
            model.set_submodule(name, layer)
            layers[name] = {"in": layer.in_features, "out": layer.out_features,
                            "bias": layer.bias is not None, "bits": code.bits,
                            "group_size": code.group_size}
        return {"layers": layers}


def _device(model: nn.Module) -> Any:
    for param in model.parameters():
        return param.device
    return "cpu"
