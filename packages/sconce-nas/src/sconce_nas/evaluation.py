"""Scoring a candidate subnet: inherited weights, BatchNorms recalibrated, validation accuracy.

:class:`CandidateEvaluator` holds everything a score needs (the supernet, fixed calibration
batches, fixed validation samples, a thread count) so that it gives the same number for the
same subnet in any process: in this one (:class:`LocalExecutor`) or in Ray workers
(:class:`sconce_nas.executors.RayExecutor`).

Example:
    >>> import torch
    >>> from sconce_nas.elastic import ElasticCNN
    >>> from sconce_nas.supernet import Supernet
    >>> space = ElasticCNN(in_channels=1, image_size=8, num_classes=2, stages=((8, 1),))
    >>> batches = EvalBatches(calibration=[torch.randn(8, 1, 8, 8)],
    ...                       val=[(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))])
    >>> evaluator = CandidateEvaluator(Supernet(space), batches, threads=1)
    >>> 0.0 <= evaluator(space.smallest()) <= 100.0
    True
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sconce.adapter import ClassifierAdapter
from sconce.data import Data
from sconce.evaluation import evaluate
from sconce.metrics.timing import fixed_threads
from sconce_nas.deploy import recalibrate_batchnorms
from sconce_nas.space import Choice
from sconce_nas.supernet import Supernet

logger = logging.getLogger(__name__)

CPU = torch.device("cpu")


@dataclass
class EvalBatches:
    """Fixed input batches for BatchNorm recalibration and labelled validation batches."""

    calibration: list[torch.Tensor] = field(default_factory=list)
    val: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def from_data(cls, data: Data, calibration_batches: int, val_samples: int | None,
                  seed: int = 0) -> EvalBatches:
        """The first ``calibration_batches`` training batches (inputs) and the first
        ``val_samples`` validation samples (all of them for None), on the CPU.

        A shuffling training loader draws its order from ``seed`` (the global random state
        is left as it was), so the same seed gives the same calibration batches and the
        same scores in every call and process.

        Example:
            >>> EvalBatches.from_data(data, 4, 1000, seed=0)  # doctest: +SKIP
        """
        adapter = ClassifierAdapter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            calibration = [adapter.split_batch(batch)[0].cpu() for batch in
                           itertools.islice(data.loader("calibration"), calibration_batches)]
        val = []
        for batch in data.batches("val", val_samples):
            inputs, targets = adapter.split_batch(batch)
            if targets is not None:
                val.append((inputs.cpu(), targets.cpu()))
        if val_samples is not None and val:
            seen = sum(int(t.shape[0]) for _, t in val)
            if seen > val_samples:  # cut the last batch: exactly val_samples samples
                inputs, targets = val[-1]
                keep = int(targets.shape[0]) - (seen - val_samples)
                val[-1] = (inputs[:keep], targets[:keep])
        return cls(calibration, val)

    @property
    def val_samples(self) -> int:
        """Labelled validation samples held."""
        return sum(int(t.shape[0]) for _, t in self.val)


class CandidateEvaluator:
    """Validation accuracy (%) of a member cut from ``supernet``, BatchNorms recalibrated.

    Args:
        supernet: the trained supernet (on the CPU).
        batches: the fixed calibration and validation batches.
        threads: torch threads during a score (the same everywhere, so scores agree bit for
            bit between this process and Ray workers).
    """

    def __init__(self, supernet: Supernet, batches: EvalBatches, threads: int = 1) -> None:
        self.supernet = supernet.cpu().eval()
        self.batches = batches
        self.threads = threads

    def __call__(self, choice: Choice, val: Sequence[tuple[torch.Tensor, torch.Tensor]]
                 | None = None) -> float:
        """Accuracy of member ``choice`` on ``val`` (default: the evaluator's validation)."""
        with fixed_threads(self.threads):
            model = self.supernet.extract(choice)
            recalibrate_batchnorms(model, self.batches.calibration)
            result = evaluate(model, val if val is not None else self.batches.val,
                              ClassifierAdapter(), CPU)
        return result.accuracy

    def subnet(self, choice: Choice) -> torch.nn.Module:
        """The standalone member ``choice`` with its BatchNorms recalibrated (eval mode)."""
        with fixed_threads(self.threads):
            model = self.supernet.extract(choice)
            return recalibrate_batchnorms(model, self.batches.calibration)


class LocalExecutor:
    """Scores candidates one after another in this process.

    Example:
        >>> LocalExecutor(lambda choice: 50.0).map([{"a": 1}, {"a": 2}])
        [50.0, 50.0]
        >>> LocalExecutor(lambda choice: 50.0).workers
        1
    """

    workers = 1

    def __init__(self, evaluator: CandidateEvaluator | object) -> None:
        self.evaluator = evaluator

    def map(self, choices: Sequence[Choice]) -> list[float]:
        """Scores of ``choices``, in order."""
        return [float(self.evaluator(choice)) for choice in choices]  # type: ignore[operator]

    def close(self) -> None:
        """Nothing to release."""
