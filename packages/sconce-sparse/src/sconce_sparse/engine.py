"""``sparse.engine``: run each sparse layer in the format measured fastest for it, or dense.

For every Linear / Conv layer with enough zeros, the engine

1. records the shape of what the layer receives when the model runs at batch 1 and at the
   run's throughput batch (``ctx.timing.batch_size``), or at ``batch_sizes``;
2. detects the block structure of its zeros (:mod:`sconce_sparse.blocks`) and lists the
   formats that can run it here (:mod:`sconce_sparse.formats`);
3. checks each format's output against the dense layer's (``check_tolerance``, relative);
4. times dense and every format on inputs of those shapes, interleaved round by round
   (:mod:`sconce_sparse.timing`), with the run's thread count;
5. keeps, per batch size, the fastest format that is at least ``min_speedup`` faster than
   dense in the paired per-round ratios, else dense (:mod:`sconce_sparse.choice`).

The layers are stored compressed in any case (as with ``sparse.storage``); embeddings and
int8 layers are stored sparse and run as before. Every decision, with the measured times, is
in the report's notes and in the restore record that ``sconce.load`` replays.

Example:
    >>> import sconce
    >>> result = sconce.compress(model, data, recipe=[("prune.gmp", {"sparsity": 0.9}),
    ...                                                "sparse.engine"])  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sconce.runtime import model_device
from sconce_sparse.choice import Measurement, choose_plan
from sconce_sparse.config import EngineConfig, StorageConfig
from sconce_sparse.convert import Candidate, Found, layer_record, to_sparse
from sconce_sparse.formats import CONV_ONLY_FORMATS, FORMATS, WeightInfo, get_format
from sconce_sparse.layers import SparseLayer
from sconce_sparse.quantized import SparseQuantized
from sconce_sparse.storage import SparseStorage
from sconce_sparse.timing import input_shapes, interleaved_times

if TYPE_CHECKING:
    from sconce.context import Context

logger = logging.getLogger(__name__)

__all__ = ["SparseEngine", "candidate_formats", "relative_error"]


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """``||output - reference|| / ||reference||`` (0 when both are zero).

    Example:
        >>> relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
        1.0
    """
    scale = float(reference.double().norm())
    diff = float((output.double() - reference.double()).norm())
    return diff / scale if scale else diff


def candidate_formats(kind: str, info: WeightInfo, allowed: Sequence[str]) -> dict[str, str]:
    """The sparse formats to measure for a layer, and why the others cannot run it.

    Returns ``{format: ""}`` for runnable ones and ``{format: reason}`` for the rest.

    Example:
        >>> info = WeightInfo((8, 8), torch.device("cpu"), torch.float32)
        >>> candidate_formats("linear", info, ["csr", "bsr"])
        {'csr': '', 'bsr': 'no square block structure'}
    """
    names = [n for n in (allowed or FORMATS) if n != "dense"]
    result = {}
    for name in names:
        if name in CONV_ONLY_FORMATS and kind != "conv":
            continue
        result[name] = get_format(name).unavailable(info) or ""
    return result


class SparseEngine(SparseStorage):
    """Run sparse Linear / Conv layers in the format measured fastest per layer (or dense).

    The same conversion as :class:`~sconce_sparse.storage.SparseStorage` (and the same
    ``restore``), with each layer's plan measured.

    Example:
        >>> SparseEngine().name, SparseEngine().kind
        ('sparse.engine', 'sparsify')
    """

    name = "sparse.engine"
    kind = "sparsify"
    Config = EngineConfig
    finetune_after = False

    def convert(self, model: nn.Module, found: Found, config: StorageConfig, ctx: Context
                ) -> tuple[dict[str, SparseLayer | SparseQuantized], dict[str, dict[str, Any]]]:
        """Measure every runnable layer and give it its plan; store every layer compressed."""
        assert isinstance(config, EngineConfig)
        device = model_device(model, ctx.device)
        batches = sorted(set(config.batch_sizes or (1, ctx.timing.batch_size)))
        runnable = [c for c in found.layers if c.runs_sparse]
        shapes = {batch: input_shapes(model, [c.name for c in runnable],
                                      ctx.adapter.to_device(ctx.example_inputs(batch), device),
                                      ctx.adapter.forward)
                  for batch in batches}
        layers: dict[str, SparseLayer | SparseQuantized] = {}
        records: dict[str, dict[str, Any]] = {}
        decisions: dict[str, str] = {}
        for candidate in ctx.track(found.layers, description="sparse engine: measuring layers"):
            layer = to_sparse(candidate, encoding=config.encoding)
            record = layer_record(layer)
            if isinstance(layer, SparseLayer) and candidate.runs_sparse:
                layer_shapes = {b: shapes[b][candidate.name] for b in batches
                                if candidate.name in shapes[b]}
                if not layer_shapes:
                    decisions[candidate.name] = "dense (never called by the model's forward)"
                else:
                    record.update(self._decide(candidate, layer, layer_shapes, config, ctx,
                                               device))
                    decisions[candidate.name] = record.pop("decision")
            layers[candidate.name] = layer
            records[candidate.name] = record
        self._notes(ctx, layers, decisions, config)
        return layers, records

    def _decide(self, candidate: Candidate, layer: SparseLayer,
                shapes: dict[int, tuple[int, ...]], config: EngineConfig, ctx: Context,
                device: torch.device) -> dict[str, Any]:
        """Measure the layer in every format at each batch size; set its plan."""
        module: Any = candidate.module
        weight = module.weight.detach()
        info = WeightInfo.of(weight)
        formats = candidate_formats(candidate.kind, info, config.formats)
        runnable = [name for name, reason in formats.items() if not reason]
        rejected: dict[str, str] = {}
        measurements = []
        for batch, shape in shapes.items():
            x = torch.randn(shape, device=device, dtype=weight.dtype)
            with torch.inference_mode():
                reference = layer.run(x, "dense")
                for name in list(runnable):
                    error = relative_error(layer.run(x, name), reference)
                    if error > config.check_tolerance:
                        rejected[name] = f"relative error {error:.1e}"
                        runnable.remove(name)
            calls = {name: functools.partial(layer.run, x, name) for name in ["dense", *runnable]}
            times = interleaved_times(calls, rounds=config.rounds,
                                      round_seconds=config.round_seconds,
                                      threads=ctx.timing.threads, device=device)
            measurements.append(Measurement(batch, layer.rows(x), times))
        plan = choose_plan(measurements, config.min_speedup)
        layer.set_plan(plan)
        by_batch = {m.batch: m for m in measurements}
        parts = []
        for m in measurements:
            chosen = next(name for limit, name in plan if limit is None or m.rows <= limit)
            ratio = "" if chosen == "dense" else f" {m.speedup(chosen):.2f}x"
            parts.append(f"b={m.batch}: {chosen}{ratio}")
        unavailable = {name: reason for name, reason in formats.items() if reason}
        return {
            "plan": [list(entry) for entry in plan],
            "block": list(info.block) if info.block else None,
            "measured": [by_batch[b].to_dict() for b in sorted(by_batch)],
            "not measured": {**unavailable, **rejected},
            "decision": ", ".join(parts),
        }

    @staticmethod
    def _notes(ctx: Context, layers: dict[str, SparseLayer | SparseQuantized],
               decisions: dict[str, str], config: EngineConfig) -> None:
        run = [layer for layer in layers.values()
               if isinstance(layer, SparseLayer) and layer.plan != (((None, "dense"),))]
        formats = Counter(name for layer in run if isinstance(layer, SparseLayer)
                          for _, name in layer.plan if name != "dense")
        measured = len(decisions)
        summary = ", ".join(f"{name} {count}" for name, count in formats.most_common())
        ctx.note("sparse engine", f"{len(run)} of {measured} measured layer(s) run sparse"
                 + (f" ({summary})" if summary else "")
                 + f"; dense kept where no format was {config.min_speedup:g}x faster")
        ctx.note("per-layer formats", decisions)

