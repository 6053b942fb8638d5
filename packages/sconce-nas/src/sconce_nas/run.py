"""One architecture search, end to end, inside a :class:`sconce.Context`.

limits → latency table → feasibility check → supernet (trained once, cached in the work
folder) → NSGA-II search (here or on Ray) → finalists re-scored on the whole validation
split and timed → the chosen subnet cut out, BatchNorms recalibrated, fine-tuned (distilled
from the supernet's largest member by default) and deployed (BatchNorms folded). Both the
``nas.search`` technique and :func:`sconce_nas.search` run this.

Example:
    >>> outcome = run_nas(ctx, NASConfig(target_latency="2x"), reference=model)  # doctest: +SKIP
    >>> outcome.model  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.context import Context
from sconce.data import Data
from sconce.recipe import Target
from sconce.serialization import Architecture, StageRecord, save_model
from sconce.storage import atomic_write_bytes, atomic_write_json
from sconce_nas.config import NASConfig
from sconce_nas.costs import CostModel, Limits, resolve_limits
from sconce_nas.deploy import deploy
from sconce_nas.evaluation import CandidateEvaluator, EvalBatches
from sconce_nas.executors import make_executor, ray_available
from sconce_nas.latency import LatencyCheck, LatencyTable
from sconce_nas.nsga import Candidate, SearchOutcome, run_search
from sconce_nas.plot import plot_pareto
from sconce_nas.space import Choice, SearchSpace, space_from_record
from sconce_nas.supernet import Supernet
from sconce_nas.training import SUPERNET_WEIGHTS, fingerprint, supernet_info, train_supernet

logger = logging.getLogger(__name__)

CALIBRATION_SUBNETS = 16
"""Subnets (smallest, largest and random ones) whose measured latency fits the table's
line; the check never checks them (it times them among the checked subnets only to
re-anchor the table's speed). The gap between a subnet and the sum of its units
varies from subnet to subnet (measured: -0.04 to +0.09 ms on 50 subnets of 0.4-1.1 ms), so
a fit on 6 subnets moved the predictions by several percent from one table to the next."""

PAIRED_PASSES = 3
"""Passes of the choice's timing, each timing the reference (under a relative latency limit)
and then the candidate; each keeps its fastest."""

_CONSTRAINT_NAMES = {"target_latency": "latency_ms", "target_macs": "macs",
                     "target_size_mib": "size_mib"}


@dataclass
class NASResult:
    """What one search produced.

    Attributes:
        model: the chosen subnet, fine-tuned and deployed (BatchNorms folded), eval mode.
        chosen: the chosen candidate (choice, predicted costs, search accuracy).
        search: every scored candidate and the Pareto front.
        limits: the absolute limits the search met (a latency limit relative to a reference
            model as re-timed when the subnet was chosen).
        record: the JSON record that rebuilds ``model``'s structure (``restore``).
        latency_check: the lookup table against measured latency on random subnets.
        measured_latency_ms: the chosen subnet's measured batch-1 latency (deployed).
        latency_limit_at_start_ms: a relative latency limit as first timed (before the
            supernet's training); ``limits`` holds it as re-timed at the choice.
        finalists: full-validation accuracy of each finalist, by trial number.
        supernet_seconds, search_seconds: wall time of the supernet's training (recorded when
            it was trained, also when a later search reuses it) and of the search.
        supernet_reused: the supernet was trained by an earlier call and loaded.
        workers: candidate scorers used.
        artifacts: files written (the Pareto PNG, the search JSON).
        config: the search's settings (as in the saved model's record).
    """

    model: nn.Module
    chosen: Candidate
    search: SearchOutcome
    limits: Limits
    record: dict[str, Any]
    latency_check: LatencyCheck | None = None
    measured_latency_ms: float | None = None
    latency_limit_at_start_ms: float | None = None
    finalists: dict[int, float] = field(default_factory=dict)
    supernet_seconds: float = 0.0
    supernet_reused: bool = False
    search_seconds: float = 0.0
    workers: int = 1
    artifacts: list[Path] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | Path) -> Path:
        """Write ``model.pt`` + ``model.json`` (loadable by :func:`sconce.load`) and the
        artifacts (Pareto PNG, search JSON) to ``out``, every file atomically.

        A member of the built-in family is rebuilt by name; for a family of your own, declare
        it, then ``sconce.load(out, model=<any module>)`` (the record replaces the module).

        Example:
            >>> result.save("nas-out")  # doctest: +SKIP
            PosixPath('nas-out')
        """
        from sconce_nas.elastic import ElasticCNN

        out = Path(out)
        spec, kwargs = None, {}
        if self.record["family"] == ElasticCNN.family:
            spec = ElasticCNN.family
            kwargs = {k: self.record["space"][k]
                      for k in ("in_channels", "image_size", "num_classes")}
        stage = StageRecord("nas.search", dict(self.config), self.record)
        save_model(self.model, out, architecture=Architecture(spec, kwargs, [stage]))
        for artifact in self.artifacts:
            atomic_write_bytes(out / "artifacts" / artifact.name, artifact.read_bytes())
        return out

    def notes(self) -> dict[str, Any]:
        """Short facts for the report."""
        check = self.latency_check
        notes: dict[str, Any] = {
            "search space": f"{self.record['family']} ({_space_size(self.record)} members)",
            "chosen subnet": " ".join(f"{k}={v}" for k, v in self.chosen.choice.items()),
            "limits": {k: round(v, 6) for k, v in self.limits.to_dict().items()} or "none",
            "supernet training": f"{self.supernet_seconds:.1f} s"
                                 + (" (earlier, reused)" if self.supernet_reused else ""),
            "search": (f"{len(self.search.candidates)} candidates scored in "
                       f"{self.search_seconds:.1f} s on {self.workers} worker(s), "
                       f"{self.search.rejected} proposals over the limits, "
                       f"{len(self.search.front)} on the Pareto front"),
            "chosen validation accuracy (supernet weights)":
                round(self.finalists.get(self.chosen.number, self.chosen.accuracy), 2),
            "predicted latency": f"{self.chosen.costs.latency_ms:.4f} ms",
        }
        if self.measured_latency_ms is not None:
            notes["measured latency (deployed)"] = f"{self.measured_latency_ms:.4f} ms"
        if self.latency_limit_at_start_ms is not None:
            notes["latency limit at the start"] = f"{self.latency_limit_at_start_ms:.4f} ms"
        if check is not None and check.predicted:
            notes["latency table check"] = (
                f"within 10% on {100 * check.within(0.10):.0f}% of {len(check.predicted)} "
                "random subnets")
        return notes


def _space_size(record: dict[str, Any]) -> int:
    return space_from_record(record).size


def make_space(config: NASConfig, data: Data) -> SearchSpace:
    """The space ``config`` names, shaped by ``data`` for the built-in family.

    Example:
        >>> make_space(NASConfig(), data).family  # doctest: +SKIP
        'elastic-cnn'
    """
    from sconce_nas.elastic import ElasticCNN

    if config.space == ElasticCNN.family:
        return ElasticCNN.for_data(data, **config.space_options)
    return space_from_record({"family": config.space, "space": config.space_options})


def merged_targets(ctx: Context, config: NASConfig) -> dict[str, Any]:
    """The run's constraints (latency, MACs, size) overridden by the config's targets.

    Example:
        >>> merged_targets(Context.for_inputs(None), NASConfig(target_macs="2x"))
        {'macs': '2x'}
    """
    targets: dict[str, Any] = {}
    if ctx.constraints is not None:
        for name, cost in _CONSTRAINT_NAMES.items():
            value = getattr(ctx.constraints, name)
            if value is not None:
                targets[cost] = value
    targets.update(config.targets())
    return targets


def _random_choices(space: SearchSpace, count: int, label: str, seed: int
                    ) -> list[dict[str, Any]]:
    rng = random.Random(f"{label}:{seed}")
    return [space.sample(rng) for _ in range(count)]


def resolve_workers(config: NASConfig) -> int:
    """Scorers to use: the config's, or for 0 one per CPU on Ray when installed, else 1.

    Example:
        >>> resolve_workers(NASConfig(workers=3))
        3
    """
    if config.workers > 0:
        return config.workers
    if not ray_available():
        return 1
    import os

    return max(1, len(os.sched_getaffinity(0)) // config.threads_per_worker)


def choose(search: SearchOutcome, evaluator: CandidateEvaluator,
           val: Sequence[tuple[torch.Tensor, torch.Tensor]], table: LatencyTable,
           space: SearchSpace, example: torch.Tensor, limits: Limits, finalists: int,
           latency_limit: Callable[[], float] | None = None
           ) -> tuple[Candidate, dict[int, float], float | None, float | None]:
    """The finalist most accurate on the whole validation split among the most accurate
    candidates whose measured latency (under a latency limit) meets the limit.

    Args:
        latency_limit: times the latency limit again (a limit relative to a reference
            model). The reference and each candidate are timed in turn, :data:`PAIRED_PASSES`
            times, each keeping its fastest: both are measured in the same minute (on a shared
            machine the speed drifts between the start of a run and its end), and a slow
            spell during one pass loosens or tightens nothing.

    Returns the chosen candidate, every finalist's accuracy, the chosen one's measured
    latency and the latency limit it met (both None without a latency limit).
    """
    scores: dict[int, float] = {}
    measured: dict[int, float] = {}
    limit_met: dict[int, float] = {}
    for candidate in search.ranked():
        if len(scores) >= finalists:
            break
        if limits.latency_ms is not None:
            model = table.deployed(space, candidate.choice)
            limit = limits.latency_ms if latency_limit is None else float("inf")
            ms = float("inf")
            for _ in range(PAIRED_PASSES):
                if latency_limit is not None:
                    limit = min(limit, latency_limit())
                ms = min(ms, table.measure(model, example))
            if ms > limit:
                logger.info("candidate %d measures %.4f ms over the %.4f ms limit (predicted "
                            "%.4f); skipped", candidate.number, ms, limit,
                            candidate.costs.latency_ms)
                continue
            measured[candidate.number], limit_met[candidate.number] = ms, limit
        scores[candidate.number] = evaluator(candidate.choice, val=val)
    if not scores:  # every candidate measured over the limit: the fastest one
        fastest = min(search.candidates, key=lambda c: c.costs.latency_ms)
        logger.warning("every candidate measured over the latency limit; taking the fastest")
        scores[fastest.number] = evaluator(fastest.choice, val=val)
    by_number = {c.number: c for c in search.candidates}
    best = max(scores, key=lambda n: (scores[n], -by_number[n].costs.get(search.objective)))
    return by_number[best], scores, measured.get(best), limit_met.get(best)


def _reanchor(table: LatencyTable, space: SearchSpace, example: torch.Tensor,
              calibration: Sequence[Choice], limits: Limits,
              retime: Callable[[], float] | None) -> Limits:
    """The table re-anchored to the machine's speed now, and the limits with a relative
    latency limit timed again at that speed."""
    table.rescale(space, example, calibration)
    return limits if retime is None else replace(limits, latency_ms=retime())


def lower_timing(limits: Limits, retime: Callable[[], float] | None) -> Limits:
    """``limits`` with a relative latency limit timed once more, the lower timing kept.

    A slow moment of the machine during the reference's first timing would loosen the whole
    search: in one benchmark run the first timing gave a 1.010 ms limit, the timing at the
    choice 0.690 ms, and 87 of the search's 200 candidates fell between the two.

    Example:
        >>> lower_timing(Limits(latency_ms=1.0), lambda: 0.7).latency_ms
        0.7
        >>> lower_timing(Limits(latency_ms=1.0), lambda: 1.3).latency_ms
        1.0
    """
    if retime is None or limits.latency_ms is None:
        return limits
    return replace(limits, latency_ms=min(limits.latency_ms, retime()))


def _relative_limit(target: Target, table: LatencyTable, reference: nn.Module,
                    example: torch.Tensor) -> float:
    """A relative latency limit on the reference's latency measured now."""
    return target.limit(table.measure(reference, example))


def supernet_path(folder: Path, space: SearchSpace, data: Data, config: NASConfig, seed: int
                  ) -> Path:
    """Where a search in work folder ``folder`` keeps (and finds) its trained supernet: one
    sub-folder per space, data and training settings.

    Example:
        >>> supernet_path(Path("work/nas"), space, data, NASConfig(), 0)  # doctest: +SKIP
        PosixPath('work/nas/supernet-3f2a9c0d1e4b5a6c')
    """
    settings = {"epochs": float(config.supernet_epochs), "lr": config.supernet_lr,
                "random_subnets": config.random_subnets, "seed": seed}
    return folder / f"supernet-{fingerprint(space, data, settings)}"


def run_nas(ctx: Context, config: NASConfig, reference: nn.Module | None = None
            ) -> NASResult:
    """Search, choose, fine-tune and deploy a subnet under the run's and config's limits.

    Args:
        ctx: data, device, seed, work folder, fine-tuning budget and constraints.
        config: the search's settings.
        reference: the model ratio targets (``"2x"``) are relative to.

    Raises:
        InfeasibleConstraint: a limit below the smallest subnet of the space (raised before
            any training).
    """
    data = ctx.require_data()
    seed = ctx.seed if config.seed is None else config.seed
    space = make_space(config, data)
    folder = ctx.work_dir / "nas"
    example = ctx.example_inputs(1).detach().cpu()
    table = LatencyTable(ctx.timing, path=folder / "latency-table.json",
                         channels_last=config.channels_last)
    ref = copy.deepcopy(reference).cpu().eval() if reference is not None else None
    targets = merged_targets(ctx, config)
    limits = resolve_limits(targets, ref, example, ctx.timing, latency=table.measure)
    first_limit = limits.latency_ms
    relative = Target.parse(targets.get("latency_ms"), "target_latency")
    retime: Callable[[], float] | None = None
    if relative is not None and relative.is_ratio and ref is not None:
        retime = partial(_relative_limit, relative, table, ref, example)
    costs = CostModel(space, example, table)
    calibration = [space.smallest(), space.largest(),
                   *_random_choices(space, CALIBRATION_SUBNETS - 2, "calibration", seed)]
    if not table.calibrated:
        table.calibrate(space, example, calibration)
    else:  # a table kept from an earlier run: at this run's speed
        table.rescale(space, example, calibration)
    limits = lower_timing(limits, retime)
    limits.check_feasible(costs(space.smallest()))

    supernet_folder = supernet_path(folder, space, data, config, seed)
    reused = (supernet_folder / SUPERNET_WEIGHTS).is_file()
    started = time.perf_counter()
    supernet = train_supernet(
        space, data, config.supernet_epochs, lr=config.supernet_lr,
        random_subnets=config.random_subnets, seed=seed, device=ctx.device,
        progress=ctx.progress, folder=supernet_folder)
    supernet_seconds = (float(supernet_info(supernet_folder).get("train_seconds", 0.0))
                        if reused else time.perf_counter() - started)

    if not reused:  # training took minutes: the machine's speed may have moved since
        limits = _reanchor(table, space, example, calibration, limits, retime)
        costs = CostModel(space, example, table)
    evaluator = CandidateEvaluator(supernet, EvalBatches.from_data(
        data, config.calibration_batches, config.val_samples, seed), config.threads_per_worker)
    workers = resolve_workers(config)
    started = time.perf_counter()
    executor = make_executor(evaluator, workers, config.ray_address)
    try:
        search = run_search(space, costs, limits, executor, objective=config.objective_cost,
                            trials=config.trials, population=config.population, seed=seed)
    finally:
        executor.close()
    search_seconds = time.perf_counter() - started
    full_val = EvalBatches.from_data(data, 0, None).val
    chosen, finalists, measured, limit = choose(search, evaluator, full_val, table, space,
                                                example, limits, config.finalists, retime)
    start_limit = None
    if retime is not None and limit is not None:
        start_limit = first_limit
        logger.info("latency limit %.4f ms at the start, %.4f ms re-timed at the choice",
                    first_limit, limit)
        limits = replace(limits, latency_ms=limit)
    logger.info("chosen: %s (validation %.2f%%, predicted %.4f ms)", space.key(chosen.choice),
                finalists[chosen.number], chosen.costs.latency_ms)

    model = _finetune(ctx, config, evaluator, supernet, chosen)
    deployed = deploy(model.cpu(), channels_last=config.channels_last, inplace=True)
    check = None
    if config.lut_check:
        # fine-tuning took minutes: re-anchored on the calibration subnets timed among these
        check = table.check(space, example, _random_choices(space, config.lut_check, "check",
                                                            seed), anchors=calibration)
    record = {"family": space.family, "space": space.spec(), "choice": chosen.choice,
              "channels_last": config.channels_last}
    outcome = NASResult(model=deployed.to(ctx.device).eval(), chosen=chosen, search=search,
                         limits=limits, record=record, latency_check=check,
                         measured_latency_ms=measured, latency_limit_at_start_ms=start_limit,
                         finalists=finalists,
                         supernet_seconds=supernet_seconds, supernet_reused=reused,
                         search_seconds=search_seconds,
                         workers=workers, config=config.to_dict())
    outcome.artifacts.append(plot_pareto(search, chosen, limits,
                                         ctx.artifact_path("nas-pareto.png")))
    details = ctx.artifact_path("nas-search.json")
    atomic_write_json(details, json.loads(json.dumps({
        "record": record, "limits": limits.to_dict(), "chosen": chosen.to_dict(),
        "finalists": finalists, "search": search.to_dict(),
        "latency_check": check.to_dict() if check is not None else None,
        "supernet_seconds": supernet_seconds, "supernet_reused": reused,
        "search_seconds": search_seconds,
        "workers": workers}, default=str)))
    outcome.artifacts.append(details)
    return outcome


def _finetune(ctx: Context, config: NASConfig, evaluator: CandidateEvaluator,
              supernet: Supernet, chosen: Candidate) -> nn.Module:
    model = evaluator.subnet(chosen.choice).to(ctx.device)
    if ctx.finetune_epochs <= 0 or ctx.data is None or ctx.data.train is None:
        return model
    teacher: nn.Module | None = None
    if config.teacher == "supernet":
        teacher = evaluator.subnet(supernet.space.largest()).to(ctx.device)
    elif config.teacher == "original":
        teacher = ctx.teacher
    ctx.finetune(model, teacher=teacher, lr=ctx.finetune_lr * config.finetune_lr_scale)
    return model
