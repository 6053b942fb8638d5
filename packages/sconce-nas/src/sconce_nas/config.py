"""The configuration of ``nas.search``.

Example:
    >>> NASConfig(target_latency="2x", trials=100).population
    32
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sconce.config import Config, check_choice, check_positive
from sconce.errors import ConfigError
from sconce.recipe import Target

TEACHERS = ("supernet", "original", "none")
OBJECTIVES = ("latency", "macs", "params", "size")
_OBJECTIVE_COST = {"latency": "latency_ms", "macs": "macs", "params": "params",
                   "size": "size_mib"}


@dataclass
class NASConfig(Config):
    """Architecture search: train a weight-sharing supernet once, search it under limits.

    Attributes:
        space: the family searched (``elastic-cnn``, or one declared with
            :func:`sconce_nas.declare_family`).
        space_options: keyword arguments of the family (for ``elastic-cnn``: ``stages``,
            ``widths``, ``kernels``, ``expansions``, ``stem_channels``, ``head_channels``).
        supernet_epochs: supernet training budget (passes over the training set).
        supernet_lr: its AdamW learning rate.
        random_subnets: random members per training step besides the largest and smallest.
        trials: candidates scored by the search.
        population: NSGA-II population (candidates per generation).
        objective: the cost minimised beside accuracy: ``latency`` (the lookup table's
            prediction), ``macs``, ``params`` or ``size``.
        target_latency, target_macs, target_params, target_size_mib: limits (numbers, values
            with units like ``"0.4ms"`` / ``"5M"``, or ratios against the input model like
            ``"2x"``); they override the run's constraints of the same name.
        val_samples: validation samples each candidate is scored on.
        calibration_batches: training batches that re-estimate a candidate's BatchNorms.
        finalists: the most accurate candidates re-scored on the whole validation split
            (and timed, under a latency limit) before one is chosen.
        lut_check: random subnets on which the latency table's predictions are compared
            with measured latency (reported; 0 skips it).
        workers: parallel candidate scorers: 1 scores in this process; more run on Ray
            (``pip install 'sconce-nas[ray]'``); 0 means one per CPU on Ray when Ray is
            installed, else 1.
        ray_address: a Ray cluster to score on (``"auto"``, ``"ray://host:10001"``).
        threads_per_worker: torch threads per scorer (the same in every mode, so the
            results do not depend on the number of workers).
        teacher: whom the chosen subnet distils from while fine-tuned: the supernet's
            largest member, the run's ``original`` model, or ``none``.
        finetune_lr_scale: the chosen subnet's learning rate as a multiple of the run's
            fine-tuning rate. Its weights were shared by every member and trained for a
            few epochs, so it needs a training-sized step more than a fine-tuning one: on
            the Fashion-MNIST benchmark's subnet (6 epochs distilled from the VGG) 3x the
            default rate gave 92.63% test accuracy against 91.88% at 1x.
        channels_last: time and deploy conv weights channels-last (faster for 6 of 7 sampled
            members of the default space at batch 1 on this project's CPU).
        seed: the search's seed (default: the run's).
    """

    space: str = "elastic-cnn"
    space_options: dict[str, Any] = field(default_factory=dict)
    supernet_epochs: float = 4.0
    supernet_lr: float = 3e-3
    random_subnets: int = 2
    trials: int = 200
    population: int = 32
    objective: str = "latency"
    target_latency: float | str | None = None
    target_macs: float | str | None = None
    target_params: float | str | None = None
    target_size_mib: float | str | None = None
    val_samples: int = 2000
    calibration_batches: int = 8
    finalists: int = 5
    lut_check: int = 20
    workers: int = 0
    ray_address: str | None = None
    threads_per_worker: int = 1
    teacher: str = "supernet"
    finetune_lr_scale: float = 3.0
    channels_last: bool = True
    seed: int | None = None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.space, str) or not self.space:
            raise ConfigError(f"space must be a family name, got {self.space!r}")
        if not isinstance(self.space_options, dict):
            raise ConfigError(f"space_options must be a dict, got {self.space_options!r}")
        check_positive("supernet_epochs", self.supernet_epochs)
        check_positive("supernet_lr", self.supernet_lr)
        check_positive("finetune_lr_scale", self.finetune_lr_scale)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("teacher", self.teacher, TEACHERS)
        for name in ("random_subnets", "lut_check", "workers"):
            _check_int(name, getattr(self, name), 0)
        for name in ("trials", "val_samples", "calibration_batches", "finalists",
                     "threads_per_worker"):
            _check_int(name, getattr(self, name), 1)
        _check_int("population", self.population, 2)
        for name, value in self.targets().items():
            Target.parse(value, f"target for {name}")

    def targets(self) -> dict[str, Any]:
        """The limits this config sets, keyed by cost name (``latency_ms``, ``macs``, ...).

        Example:
            >>> NASConfig(target_macs="5M").targets()
            {'macs': '5M'}
        """
        values = {"latency_ms": self.target_latency, "macs": self.target_macs,
                  "params": self.target_params, "size_mib": self.target_size_mib}
        return {name: value for name, value in values.items() if value is not None}

    @property
    def objective_cost(self) -> str:
        """The cost name of :attr:`objective` (``latency`` is ``latency_ms``)."""
        return _OBJECTIVE_COST[self.objective]


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
