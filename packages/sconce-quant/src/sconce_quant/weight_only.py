"""``quant.weight_only``: int8 / int4 group-wise weights for Linear layers, by RTN or GPTQ.

Round-to-nearest (``rtn``) needs no data; ``gptq`` calibrates each layer on real inputs
through the core's layer-wise driver (:func:`sconce.layerwise.run_layerwise`), block by block
for transformer stacks, so later layers are solved on the outputs of the already-quantized
earlier ones. Layers become :class:`~sconce_quant.modules.WeightOnlyLinear` (int4 packed two
per byte), run by a low-bit kernel: ATen's int4 CPU kernel on the codes repacked into its
layout, ONNX Runtime's ``MatMulNBits`` on the packed codes, or dequantized on the fly;
``kernel="auto"`` times them on the model's layer shapes and runs every layer it can on the
fastest (:func:`choose_kernels`).
Linear layers whose weight is shared with another module (a language model's head tied to
its embedding) are left alone.

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
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import torch
from torch import nn

from sconce.config import QuantizeConfig, check_choice, check_positive, check_range
from sconce.context import Context
from sconce.errors import DataError, TechniqueError
from sconce.layerwise import LayerInputs, run_layerwise
from sconce.lowbit import GroupCodes
from sconce.metrics.timing import TimingSettings, fixed_threads, time_call
from sconce.runtime import model_device
from sconce.technique import Technique
from sconce_quant.engines.base import EngineError
from sconce_quant.gptq import GPTQSettings, gptq_quantize
from sconce_quant.int4cpu import ROW_CHUNK, int4cpu_unavailable
from sconce_quant.lowbit import NBitsKernel, nbits_unavailable
from sconce_quant.modules import KERNELS, WeightOnlyEmbedding, WeightOnlyLinear
from sconce_quant.packing import NBitsWeight, nbits_block_ok
from sconce_quant.qparams import rtn_group_codes
from sconce_quant.siblings import SiblingGroup, find_siblings, stacked_source
from sconce_quant.static import calibration_batches

logger = logging.getLogger(__name__)
CPU = torch.device("cpu")

Key = TypeVar("Key")

COMPUTE: dict[str, int] = {"int8": 4, "float32": 1}
"""``compute`` settings as ``MatMulNBits`` accuracy levels."""


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
        kernel: ``auto`` (time the kernels on the model's layer shapes at batch 1 and run
            every layer it can on the fastest, see :func:`choose_kernels`), ``torch`` (ATen's
            int4 CPU kernel, 4-bit layers, see :mod:`sconce_quant.int4cpu`), ``onnxruntime``
            (``MatMulNBits`` on the packed codes) or ``dequantize`` (a float matmul on the
            weight dequantized on the fly). A named kernel runs every layer it can; each
            other layer gets the fastest kernel that can run it.
        compute: for ``onnxruntime``: ``int8`` (activations quantized per block of 128
            inputs inside the kernel, int8 dot products: fastest) or ``float32``.
        tied: what to do with a Linear layer whose weight an embedding shares (a language
            model's output layer): ``float`` (leave both alone) or ``int8`` (the shared
            matrix becomes int8 codes by round to nearest, in groups of ``group_size``,
            stored once: the output layer runs on them and the embedding looks tokens up in
            them).
        siblings: layers on one kernel (``onnxruntime`` or ``torch``) that read the same
            input (a transformer's query/key/value projections, an MLP's gate and up
            projections) run as one call
            (:mod:`sconce_quant.siblings`; found by one forward on an example input).

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
    kernel: str = "auto"
    compute: str = "int8"
    tied: str = "float"
    siblings: bool = True

    def validate(self) -> None:
        super().validate()
        check_choice("bits", self.bits, (4, 8))
        check_choice("method", self.method, ("gptq", "rtn"))
        check_choice("kernel", self.kernel, ("auto", *KERNELS))
        check_choice("compute", self.compute, tuple(COMPUTE))
        check_choice("tied", self.tied, ("float", "int8"))
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
    targets: list[str] = []
    tied: list[str] = []
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
        accuracy_level = COMPUTE[config.compute]
        # found before any layer is swapped (they are found by their shared weight)
        tied_embeddings = _tied_embeddings(model, tied) if config.tied == "int8" else {}

        def rtn(name: str) -> GroupCodes:
            weight = cast(torch.Tensor, model.get_submodule(name).weight)
            return rtn_group_codes(weight.detach(), config.bits,
                                   config.group_size, symmetric=config.symmetric,
                                   search=config.searches())

        def tied_rtn(name: str) -> GroupCodes:  # int8: the codes serve lookups and the output
            weight = cast(torch.Tensor, model.get_submodule(name).weight)
            return rtn_group_codes(weight.detach(), 8,
                                   config.group_size, symmetric=config.symmetric)

        if config.method == "rtn":
            record = self._swap(model, targets, rtn, accuracy_level)
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
            record = self._swap(model, list(codes), codes.pop, accuracy_level)
        if tied_embeddings:
            heads = sorted(set(tied_embeddings.values()))
            record["layers"].update(self._swap(model, heads, tied_rtn, accuracy_level)["layers"])
            _tie(model, tied_embeddings)
        record["tied"] = tied_embeddings
        measured = choose_kernels(model, config, ctx.timing.threads)
        kernels = set()
        for name, layer in model.named_modules():
            if isinstance(layer, WeightOnlyLinear) and name in record["layers"]:
                record["layers"][name].update(kernel=layer.kernel, shards=layer.shards)
                kernels.add(layer.kernel)
        record["siblings"] = []
        if kernels - {"dequantize"} and config.siblings:
            record["siblings"], grouped = _group_siblings(model, ctx)
            ctx.note("weight-only siblings", grouped)
        ctx.set_restore_record(record)
        group = "per row" if config.group_size <= 0 else f"groups of {config.group_size}"
        ctx.note("weight-only", f"{len(record['layers'])} Linear layer(s) to int{config.bits} "
                 f"({config.method.upper()}, {group}, "
                 f"{'symmetric' if config.symmetric else 'asymmetric'}"
                 f"{', ranges searched' if config.searches() else ''})")
        ctx.note("weight-only kernel", measured)
        if tied and config.tied == "int8":
            ctx.note("tied embeddings", ", ".join(f"{emb} reads int8 {head}"
                                                  for emb, head in tied_embeddings.items()))
        elif tied:
            ctx.note("left in float (weight shared with another module)", ", ".join(tied))
        return model

    def restore(self, model: nn.Module, config: WeightOnlyConfig, record: dict[str, Any]
                ) -> nn.Module:
        """Put empty :class:`WeightOnlyLinear` layers where the saved model has them, each on
        its recorded kernel (dequantizing where that kernel cannot run here)."""
        missing: set[str] = set()
        for name, shape in record["layers"].items():
            kernel = shape.get("kernel", record.get("kernel", "dequantize"))
            reason = _kernel_unavailable(kernel, shape["bits"], shape["group_size"],
                                         shape["in"], shape["out"])
            if reason is not None:
                missing.add(f"{kernel} ({reason})")
                kernel = "dequantize"
            # on the float layer's device: restoring a model built on "meta" allocates nothing
            with torch.device(model_device(model.get_submodule(name), CPU)):
                layer = WeightOnlyLinear(shape["in"], shape["out"], bits=shape["bits"],
                                         group_size=shape["group_size"], bias=shape["bias"],
                                         kernel=kernel,
                                         accuracy_level=shape.get("accuracy_level", 4),
                                         shards=shape.get("shards", 1))
            model.set_submodule(name, layer)
        if missing:
            logger.warning("this model ran on kernels that cannot run here: %s; those layers "
                           "dequantize on the fly instead", "; ".join(sorted(missing)))
        _tie(model, record.get("tied", {}))
        for group in record.get("siblings", []):
            members = [cast(WeightOnlyLinear, model.get_submodule(n)) for n in group["layers"]]
            if len({member.kernel for member in members}) == 1:  # else one fell back
                SiblingGroup(members, shards=group["shards"])
        return model

    @staticmethod
    def _swap(model: nn.Module, names: Sequence[str], code_for: Callable[[str], GroupCodes],
              accuracy_level: int) -> dict[str, Any]:
        """Replace each Linear by its packed layer, one at a time (``code_for(name)`` gives its
        codes), so the float weight and the unpacked codes of only one layer are alive
        besides the model."""
        layers = {}
        for name in names:
            code = code_for(name)
            linear = cast(nn.Linear, model.get_submodule(name))
            layer = WeightOnlyLinear.from_codes(code, linear.bias, accuracy_level=accuracy_level
                                                ).to(linear.weight.device)
            model.set_submodule(name, layer)
            layers[name] = {"in": layer.in_features, "out": layer.out_features,
                            "bias": layer.bias is not None, "bits": code.bits,
                            "group_size": code.group_size, "accuracy_level": accuracy_level}
        return {"layers": layers}


def _kernel_unavailable(kernel: str, bits: int, group_size: int, in_features: int,
                        out_features: int) -> str | None:
    """Why ``kernel`` cannot run a layer of this format here, or None when it can."""
    if kernel == "onnxruntime":
        if not nbits_block_ok(group_size, in_features):
            return "its groups are not powers of two of at least 16 inputs"
        return nbits_unavailable()
    if kernel == "torch":
        return int4cpu_unavailable(bits, group_size, in_features, out_features)
    return None


TORCH_KERNEL_MARGIN = 0.10
"""``auto`` keeps the ``torch`` kernel unless another is faster by more than this fraction of
its time: its codes are the layers' own, where ``MatMulNBits`` keeps a prepacked copy besides
them (SmolLM2-135M int4 GPTQ decoding: peak memory 0.32x float32's against 0.47x), and on
that model the two decode within each other's run-to-run spread (21-28 tokens/s each on 2
AVX2 cores, 4 side-by-side runs)."""


def choose_kernels(model: nn.Module, config: WeightOnlyConfig, threads: int) -> str:
    """Set each weight-only layer's kernel and return what was chosen and measured.

    One kernel runs every layer it can (the configured one, or for ``auto`` the one whose
    layers take the least time for one token at batch 1, see :data:`TORCH_KERNEL_MARGIN`);
    each other layer gets the fastest kernel that can run it. Kernels are not mixed where
    one can run both layers: on SmolLM2-135M int4, each layer shape on its own fastest
    kernel (timed alone) decoded at 20.8 tokens/s against 22.4 (``torch``) and 25.2
    (``onnxruntime``) in one run, and tied with them (28.0 against 27.9 and 27.7) in
    another: a timing of each shape alone does not see two runtimes' threads taking turns.
    Each kernel is timed on sweeps through copies of the model's layers, as a decoding step
    meets them (:func:`per_token_seconds`); ``MatMulNBits``'s shards are chosen first, by
    measurement (:func:`choose_shards`).

    Example:
        >>> from sconce_quant.qparams import rtn_group_codes
        >>> model = nn.Sequential(WeightOnlyLinear.from_codes(
        ...     rtn_group_codes(torch.randn(64, 64), 4, 32, symmetric=False), None))
        >>> choose_kernels(model, WeightOnlyConfig(kernel="torch"), threads=1)
        'torch for 1 layer (64x64)'
        >>> model[0].kernel
        'torch'
    """
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    if config.kernel == "dequantize" or not layers:
        for layer in layers:
            layer.kernel = "dequantize"
        return _describe_kernels(layers, "")
    shapes: dict[tuple[int, ...], list[WeightOnlyLinear]] = {}
    for layer in layers:
        shapes.setdefault(_shape_key(layer), []).append(layer)
    options, reasons = _kernel_options(model, shapes)
    if config.kernel != "auto" and not any(config.kernel in o for o in options.values()):
        raise EngineError(f"the {config.kernel} kernel cannot run any layer of this model: "
                          f"{reasons[config.kernel]}")
    sharded = ""
    if any("onnxruntime" in o for o in options.values()):
        sharded = choose_shards([m for m in layers if "onnxruntime" in options[_shape_key(m)]],
                                threads)
    timed = {key: o for key, o in options.items() if len(o) > 1 and config.kernel not in o}
    seconds = per_token_seconds([m for m in layers if _shape_key(m) in timed], timed,
                                threads)

    def fastest(key: tuple[int, ...]) -> str:
        return min(seconds[key], key=seconds[key].__getitem__) if key in seconds \
            else options[key][0]

    def plan(lead: str) -> dict[tuple[int, ...], str]:  # lead wherever it can run
        return {key: lead if lead in o else fastest(key) for key, o in options.items()}

    def total(chosen: dict[tuple[int, ...], str]) -> float:
        return sum(seconds[key][k] * len(shapes[key]) for key, k in chosen.items()
                   if key in seconds)

    measured = ""
    if config.kernel != "auto":
        lead = config.kernel
    else:
        leads = [k for k in KERNELS if any(k in o for o in options.values())]
        totals = {k: total(plan(k)) for k in leads}
        lead = min(totals, key=totals.__getitem__)
        if "torch" in totals and totals["torch"] <= (1 + TORCH_KERNEL_MARGIN) * totals[lead]:
            lead = "torch"
        measured = ("; auto, measured on the model's layers at batch 1 (one token): "
                    + ", ".join(f"{k} {1e3 * t:.3g} ms" for k, t in totals.items()))
    for key, kernel in plan(lead).items():
        for layer in shapes[key]:
            layer.kernel = kernel
    unavailable = "".join(f"; {kernel} not used: {reason}" for kernel, reason in reasons.items()
                          if not any(kernel in o for o in options.values()))
    used_ort = any(layer.kernel == "onnxruntime" for layer in layers)
    return _describe_kernels(layers, measured + (sharded if used_ort else "") + unavailable)


def _kernel_options(model: nn.Module, shapes: Mapping[tuple[int, ...], list[WeightOnlyLinear]]
                    ) -> tuple[dict[tuple[int, ...], list[str]], dict[str, str]]:
    """The kernels that can run each layer shape here (``dequantize`` first), and for each
    kernel that cannot run some shape, why."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    options: dict[tuple[int, ...], list[str]] = {}
    reasons: dict[str, str] = {}
    for key, group in shapes.items():
        layer = group[0]
        options[key] = ["dequantize"]
        for kernel in ("onnxruntime", "torch"):
            reason = "the model is not on the CPU" if not on_cpu else _kernel_unavailable(
                kernel, layer.bits, layer.group_size, layer.in_features, layer.out_features)
            if reason is None:
                options[key].append(kernel)
            else:
                reasons.setdefault(kernel, reason)
    return options, reasons


def _group_siblings(model: nn.Module, ctx: Context) -> tuple[list[dict[str, Any]], str]:
    """Group the layers on one kernel that read one input (one forward on an example input),
    ``MatMulNBits`` groups with their shards measured; the groups as recorded, and what was
    done."""
    layers = [m for m in model.modules()
              if isinstance(m, WeightOnlyLinear) and m.kernel != "dequantize"]
    try:
        example = ctx.adapter.to_device(ctx.example_inputs(1), _device(model))
    except DataError as exc:
        return [], f"not grouped: {exc}"
    names = find_siblings(model, lambda: ctx.adapter.forward(model, example), layers)
    recorded: list[dict[str, Any]] = []
    split, apart = 0, 0
    measured: dict[tuple[int, ...], int] = {}  # shards per group shape, timed once each
    for group in names:
        members = [cast(WeightOnlyLinear, model.get_submodule(n)) for n in group]
        shape = tuple(x for member in members for x in _shape_key(member))
        if members[0].kernel == "torch" and any(m.out_features % ROW_CHUNK for m in members):
            apart += 1
            continue
        if shape not in measured:
            measured[shape] = 1 if members[0].kernel == "torch" else faster_shards(
                partial(stacked_source, members), members[0].accuracy_level,
                members[0].in_features, ctx.timing.threads)[0]
        siblings = SiblingGroup(members, shards=measured[shape])
        recorded.append({"layers": group, "shards": siblings.shards})
        split += siblings.shards > 1
    if not recorded:
        return [], "none: no two layers on one kernel read the same input"
    sizes = sorted({len(g) for g in names})
    return recorded, (f"{len(recorded)} groups of {'/'.join(map(str, sizes))} layers reading "
                      f"one input run as one kernel call each (e.g. {', '.join(names[0])})"
                      + (f"; {split} of them split across {ctx.timing.threads} threads"
                         if split else "")
                      + (f"; {apart} left apart (torch kernel: outputs not in multiples of "
                         f"{ROW_CHUNK})" if apart else ""))


def faster_shards(source: Callable[[], tuple[NBitsWeight, torch.Tensor | None]],
                  accuracy_level: int, in_features: int, threads: int
                  ) -> tuple[int, float, float]:
    """The faster of 1 and ``threads`` shards for a kernel on ``source`` at batch 1, and the
    seconds of each (interleaved rounds; kernels built for the timing)."""
    if threads <= 1:
        return 1, 0.0, 0.0
    x = torch.randn(1, in_features)
    calls: dict[int, Callable[[], Any]] = {}
    for count in (1, threads):
        kernel = NBitsKernel(source, accuracy_level=accuracy_level, shards=count)
        calls[count] = partial(kernel, x)
    best = interleaved_seconds(calls, threads)
    chosen = min(best, key=lambda count: best[count])
    return chosen, best[1], best[threads]


def interleaved_seconds(calls: Mapping[Key, Callable[[], Any]], threads: int, rounds: int = 3
                        ) -> dict[Key, float]:
    """The best seconds per call of each of ``calls`` over ``rounds`` interleaved rounds (every
    round times every call once, so a burst of load hits them all).

    Example:
        >>> sorted(interleaved_seconds({"a": lambda: None, "b": lambda: None}, threads=1))
        ['a', 'b']
    """
    one_round = TimingSettings(threads=threads, rounds=1, round_seconds=0.05,
                               warmup_seconds=0.02, min_calls=3)
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for key, call in calls.items():
            best[key] = min(best[key], time_call(call, torch.device("cpu"), one_round) / 1e3)
    return best


def choose_shards(layers: list[WeightOnlyLinear], threads: int) -> str:
    """Give each layer shape the faster of 1 and ``threads`` ``MatMulNBits`` shards at batch 1
    (its output features split across torch's threads; small layers lose more to handing
    work to another thread than they gain); say which shapes were split.

    Each distinct shape is timed once per setting, in interleaved rounds, on kernels built
    for the timing (the layers' own kernels are built on their next call).

    Example:
        >>> from sconce_quant.qparams import rtn_group_codes
        >>> layer = WeightOnlyLinear.from_codes(rtn_group_codes(torch.randn(8, 32), 4, 16,
        ...                                                     symmetric=False), None)
        >>> choose_shards([layer], threads=1), layer.shards
        ('', 1)
    """
    if threads <= 1:
        return ""
    shapes: dict[tuple[int, ...], list[WeightOnlyLinear]] = {}
    for layer in layers:
        shapes.setdefault(_shape_key(layer), []).append(layer)
    split: list[str] = []
    for group in shapes.values():
        layer = group[0]
        chosen, alone, shared = faster_shards(layer.nbits_source, layer.accuracy_level,
                                              layer.in_features, threads)
        for member in group:
            member.shards = chosen
        if chosen > 1:
            split.append(f"{len(group)} x {layer.out_features}x{layer.in_features} "
                         f"({alone * 1e6:.0f} -> {shared * 1e6:.0f} us)")
    return f"; split across {threads} threads: {', '.join(split)}" if split else ""


def _shape_key(layer: WeightOnlyLinear) -> tuple[int, ...]:
    return (layer.in_features, layer.out_features, layer.bits, layer.group_size,
            int(layer.bias is not None))


SWEEP_LAYERS = 16
"""Layers of each shape (copies of the model's own, the first in model order) a kernel's
timing sweeps through (:func:`per_token_seconds`). The copies live only while the kernels
are timed: on SmolLM2-135M int4, 17 MiB of codes for ``torch``, 44 MiB for
``MatMulNBits`` (which also runs the 28 MiB int8 head)."""


def per_token_seconds(layers: Sequence[WeightOnlyLinear],
                      kernels: Mapping[tuple[int, ...], Sequence[str]], threads: int,
                      rounds: int = 7) -> dict[tuple[int, ...], dict[str, float]]:
    """Seconds one layer of each shape (:func:`_shape_key`) takes for one input row (batch 1,
    one token) on each of its ``kernels``, as a decoding step meets it.

    Each kernel is timed on a sweep: copies of up to :data:`SWEEP_LAYERS` of ``layers`` (in
    model order) of every shape it can run, each called once, so a layer's codes come from
    memory after the others went through the cache, as in a decoding step. (Timed alone, a
    layer keeps its codes in the cache: on SmolLM2-135M int4 that favoured ONNX Runtime's
    ``MatMulNBits`` by 17-21% where decoding was as fast or faster on ``torch``.)
    ``dequantize`` builds a float weight at every call wherever its codes are: one layer per
    shape. Sweeps are interleaved across kernels for ``rounds`` rounds after one warm-up
    sweep each; a shape's time on a kernel is its mean per layer in the fastest round.

    Example:
        >>> from sconce_quant.qparams import rtn_group_codes
        >>> layers = [WeightOnlyLinear.from_codes(rtn_group_codes(torch.randn(64, 32), 4, 32,
        ...                                                       symmetric=False), None)
        ...           for _ in range(3)]
        >>> times = per_token_seconds(layers, {_shape_key(layers[0]): ["dequantize", "torch"]},
        ...                           threads=1)
        >>> sorted(times[_shape_key(layers[0])])
        ['dequantize', 'torch']
    """
    sweeps: dict[str, list[tuple[tuple[int, ...], Callable[[], Any]]]] = {}
    taken: Counter[tuple[tuple[int, ...], str]] = Counter()
    for layer in layers:
        key = _shape_key(layer)
        for kernel in kernels.get(key, ()):
            if taken[key, kernel] < (1 if kernel == "dequantize" else SWEEP_LAYERS):
                taken[key, kernel] += 1
                sweeps.setdefault(kernel, []).append(
                    (key, partial(_copy_on(layer, kernel), torch.randn(1, layer.in_features))))
    best: dict[tuple[tuple[int, ...], str], float] = {}
    with fixed_threads(threads), torch.no_grad():
        for calls in sweeps.values():
            _sweep(calls)
        for _ in range(rounds):
            for kernel, calls in sweeps.items():
                for key, seconds in _sweep(calls).items():
                    best[key, kernel] = min(best.get((key, kernel), float("inf")), seconds)
    return {key: {kernel: best[key, kernel] for kernel in kernels[key]} for key in kernels}


def _sweep(calls: Sequence[tuple[tuple[int, ...], Callable[[], Any]]]
           ) -> dict[tuple[int, ...], float]:
    """Call each of ``calls`` once, in order; the mean seconds per call of each key."""
    spent: dict[tuple[int, ...], list[float]] = {}
    for key, call in calls:
        started = time.perf_counter()
        call()
        spent.setdefault(key, []).append(time.perf_counter() - started)
    return {key: sum(times) / len(times) for key, times in spent.items()}


def _copy_on(layer: WeightOnlyLinear, kernel: str) -> WeightOnlyLinear:
    """A stand-alone copy of ``layer`` (no siblings) on ``kernel``."""
    copy = WeightOnlyLinear(layer.in_features, layer.out_features, bits=layer.bits,
                            group_size=layer.group_size, bias=layer.bias is not None,
                            kernel=kernel, accuracy_level=layer.accuracy_level,
                            shards=layer.shards)
    copy.load_state_dict(layer.state_dict())
    return copy


def _tied_embeddings(model: nn.Module, heads: list[str]) -> dict[str, str]:
    """``{embedding name: output layer name}`` for embeddings sharing an output layer's weight.

    Example:
        >>> emb = nn.Embedding(10, 4); head = nn.Linear(4, 10, bias=False)
        >>> head.weight = emb.weight
        >>> _tied_embeddings(nn.ModuleDict({"emb": emb, "head": head}), ["head"])
        {'emb': 'head'}
    """
    modules = dict(model.named_modules())
    weights = {id(modules[name].weight): name for name in heads}
    return {name: weights[id(module.weight)] for name, module in modules.items()
            if isinstance(module, nn.Embedding) and id(module.weight) in weights}


def _tie(model: nn.Module, tied: dict[str, str]) -> None:
    """Replace each embedding in ``tied`` by a lookup into its quantized output layer."""
    for embedding_name, head_name in tied.items():
        head = model.get_submodule(head_name)
        if not isinstance(head, WeightOnlyLinear):
            raise TechniqueError(f"{head_name} should be a quantized output layer, "
                                 f"not {type(head).__name__}")
        padding = getattr(model.get_submodule(embedding_name), "padding_idx", None)
        model.set_submodule(embedding_name, WeightOnlyEmbedding(head, padding))


def _describe_kernels(layers: list[WeightOnlyLinear], measured: str) -> str:
    """``kernel for n layers (shapes)`` per kernel, then what was measured."""
    used: dict[str, list[WeightOnlyLinear]] = {}
    for layer in layers:
        used.setdefault(layer.kernel, []).append(layer)
    parts = []
    for kernel, group in used.items():
        shapes = sorted({f"{m.out_features}x{m.in_features}" for m in group})
        parts.append(f"{kernel} for {len(group)} layer{'s' if len(group) > 1 else ''} "
                     f"({', '.join(shapes[:4])}{', ...' if len(shapes) > 4 else ''})")
    return "; ".join(parts) + measured


def _device(model: nn.Module) -> Any:
    for param in model.parameters():
        return param.device
    return "cpu"
