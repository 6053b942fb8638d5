"""Multi-objective search over subnets with Optuna's NSGA-II, under hard limits.

Objectives: validation accuracy (up) and one deployment cost (down: predicted latency by
default). Optuna's :class:`~optuna.samplers.NSGAIISampler` proposes members through
ask-and-tell, a generation at a time: a proposal whose costs (cheap: no evaluation) break a
limit is told as pruned and never scored, so every scored candidate is feasible and the
sampler draws again until the generation is full; the generation is then scored in one batch
by an executor (this process, or Ray workers) and told back in proposal order. The trials
therefore depend only on the seed, never on how many workers scored them.

Example:
    >>> outcome = run_search(space, costs, Limits(latency_ms=0.4), executor,
    ...                      trials=100, population=20, seed=0)  # doctest: +SKIP
    >>> outcome.best().accuracy  # doctest: +SKIP
    91.4
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sconce.errors import ConfigError
from sconce_nas.costs import COSTS, CostModel, Costs, InfeasibleConstraint, Limits
from sconce_nas.space import Choice, SearchSpace

logger = logging.getLogger(__name__)

REJECTIONS_PER_TRIAL = 50
"""Proposals that break a limit tolerated per scored trial before the search gives up."""


class Executor(Protocol):
    """Scores a batch of members, in order (:class:`~sconce_nas.evaluation.LocalExecutor`)."""

    workers: int

    def map(self, choices: list[Choice]) -> list[float]: ...


@dataclass
class Candidate:
    """One scored member: its trial number, choice, costs and validation accuracy (%)."""

    number: int
    choice: Choice
    costs: Costs
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values."""
        return {"trial": self.number, "choice": dict(self.choice), "accuracy": self.accuracy,
                **self.costs.to_dict()}


@dataclass
class SearchOutcome:
    """Every scored candidate (trial order), the Pareto front, and the search's bookkeeping."""

    objective: str
    candidates: list[Candidate] = field(default_factory=list)
    front: list[Candidate] = field(default_factory=list)
    rejected: int = 0
    seconds: float = 0.0

    def best(self) -> Candidate:
        """The most accurate candidate (the cheaper one on ties)."""
        return max(self.candidates,
                   key=lambda c: (c.accuracy, -c.costs.get(self.objective), -c.number))

    def ranked(self) -> list[Candidate]:
        """Candidates from the most accurate down (cheaper first on ties)."""
        return sorted(self.candidates,
                      key=lambda c: (-c.accuracy, c.costs.get(self.objective), c.number))

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the report."""
        return {"objective": self.objective, "seconds": self.seconds, "rejected": self.rejected,
                "candidates": [c.to_dict() for c in self.candidates],
                "front": [c.number for c in self.front]}


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def run_search(
    space: SearchSpace,
    costs: CostModel,
    limits: Limits,
    executor: Executor,
    *,
    objective: str = "latency_ms",
    trials: int = 200,
    population: int = 32,
    seed: int = 0,
) -> SearchOutcome:
    """Search ``space`` for accurate members within ``limits``.

    Args:
        space: the family.
        costs: a choice's deployment costs (cheap, cached).
        limits: hard limits; proposals that break one are never scored.
        executor: scores members (validation accuracy, %), a batch at a time.
        objective: the cost minimised beside accuracy (one of ``latency_ms``, ``macs``,
            ``params``, ``size_mib``).
        trials: candidates scored in all.
        population: NSGA-II population (candidates per generation).
        seed: the sampler's seed.

    Raises:
        InfeasibleConstraint: when proposals keep breaking the limits.
    """
    import optuna

    if objective not in COSTS:
        raise ConfigError(f"objective must be one of {', '.join(COSTS)}, got {objective!r}")
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    dims = space.dimensions()
    outcome = SearchOutcome(objective=objective)
    scored: dict[str, float] = {}
    started = time.perf_counter()
    with _quiet_optuna():
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        while len(outcome.candidates) < trials:
            batch: list[tuple[Any, Choice, Costs]] = []
            want = min(population, trials - len(outcome.candidates))
            while len(batch) < want:
                trial = study.ask()
                choice = {d.name: trial.suggest_categorical(d.name, list(d.options))
                          for d in dims}
                if costs.violations(choice, limits):
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    outcome.rejected += 1
                    if outcome.rejected > REJECTIONS_PER_TRIAL * max(trials, 1):
                        raise InfeasibleConstraint(
                            f"{outcome.rejected} proposed subnets broke the limits "
                            f"{limits.to_dict()} and only {len(outcome.candidates)} met them; "
                            "relax the targets")
                    continue
                batch.append((trial, choice, costs(choice)))
            fresh = [c for _, c, _ in batch if space.key(c) not in scored]
            unique = list({space.key(c): c for c in fresh}.values())
            for choice, accuracy in zip(unique, executor.map(unique), strict=True):
                scored[space.key(choice)] = accuracy
            for trial, choice, cost in batch:
                accuracy = scored[space.key(choice)]
                study.tell(trial, [accuracy, cost.get(objective)])
                outcome.candidates.append(Candidate(trial.number, choice, cost, accuracy))
            logger.info("search: %d/%d candidates scored (%d proposals over the limits), best "
                        "%.2f%%", len(outcome.candidates), trials, outcome.rejected,
                        outcome.best().accuracy)
        front_numbers = {t.number for t in study.best_trials}
    outcome.front = sorted((c for c in outcome.candidates if c.number in front_numbers),
                           key=lambda c: c.costs.get(objective))
    outcome.seconds = time.perf_counter() - started
    return outcome
