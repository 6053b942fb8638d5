"""Candidate scoring on Ray: one actor per worker, each with its own copy of the supernet.

:class:`RayExecutor` starts a local Ray instance (or joins a cluster at ``address``), puts
the supernet's weights and the fixed evaluation batches in Ray's object store once, and
scores candidates on ``workers`` actors, each limited to ``threads`` torch threads. Results
come back in the order asked, and every actor scores exactly as
:class:`~sconce_nas.evaluation.CandidateEvaluator` does here, so a search gives the same
trials on Ray as in one process for the same seed.

Example:
    >>> executor = make_executor(evaluator, workers=2)  # doctest: +SKIP
    >>> executor.map([space.smallest(), space.largest()])  # doctest: +SKIP
    [81.2, 90.4]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from sconce.errors import SconceError
from sconce_nas.evaluation import CandidateEvaluator, EvalBatches, LocalExecutor
from sconce_nas.space import Choice, SearchSpace
from sconce_nas.supernet import Supernet

logger = logging.getLogger(__name__)


class RayMissing(SconceError):
    """Ray was asked for but is not installed."""


class RayUnavailable(SconceError):
    """Ray is installed but could not start, or its cluster could not be reached."""


def ray_available() -> bool:
    """True when ``ray`` can be imported.

    Example:
        >>> isinstance(ray_available(), bool)
        True
    """
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class _Worker:
    """A Ray actor's body: the supernet rebuilt from its weights, scoring candidates."""

    def __init__(self, space: SearchSpace, state: dict[str, torch.Tensor], batches: EvalBatches,
                 threads: int) -> None:
        torch.set_num_threads(threads)
        supernet = Supernet(space)
        supernet.load_state_dict(state)
        self.evaluator = CandidateEvaluator(supernet, batches, threads)

    def ready(self) -> bool:
        return True

    def score(self, choice: Choice) -> float:
        return self.evaluator(choice)


_START_TIMEOUT_S = 300.0  # for the workers to be ready, once Ray is up


class RayExecutor:
    """Scores candidates on ``workers`` Ray actors of ``threads`` CPUs each.

    Args:
        evaluator: the local evaluator whose supernet, batches and threads the actors copy.
        workers: actors (parallel scores).
        address: a Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a
            local Ray instance with ``workers * threads`` CPUs unless Ray already runs here.

    Raises:
        RayMissing: when ``ray`` is not installed.
        RayUnavailable: when Ray cannot start (or reach ``address``) and its workers.
    """

    def __init__(self, evaluator: CandidateEvaluator, workers: int,
                 address: str | None = None) -> None:
        if not ray_available():
            raise RayMissing("Ray is not installed; pip install 'sconce-nas[ray]' or search "
                             "with workers=1")
        import ray
        from ray.util import ActorPool

        self.workers = workers
        self._started = False
        self._actors: list[Any] = []
        try:
            if not ray.is_initialized():
                options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                           "logging_level": logging.WARNING}
                if address is None:
                    options["num_cpus"] = workers * evaluator.threads
                ray.init(address=address, **options)
                self._started = True
            state = ray.put({k: v.detach().cpu()
                             for k, v in evaluator.supernet.state_dict().items()})
            batches = ray.put(evaluator.batches)
            actor: Any = ray.remote(num_cpus=evaluator.threads)(_Worker)
            self._actors = [actor.remote(evaluator.supernet.space, state, batches,
                                         evaluator.threads) for _ in range(workers)]
            ray.get([a.ready.remote() for a in self._actors], timeout=_START_TIMEOUT_S)
        except Exception as exc:  # Ray's own errors: node start-up, connection, actors
            self.close()
            where = f"the Ray cluster at {address}" if address else "a local Ray node"
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RayUnavailable(
                f"{where} could not start {workers} worker(s) ({type(exc).__name__}: "
                f"{first_line}); check `ray status`, give fewer workers, or search in this "
                "process with workers=1") from exc
        self._pool = ActorPool(self._actors)
        logger.info("scoring candidates on %d Ray worker(s) of %d thread(s)", workers,
                    evaluator.threads)

    def map(self, choices: Sequence[Choice]) -> list[float]:
        """Scores of ``choices``, in order."""
        return [float(x) for x in self._pool.map(lambda a, c: a.score.remote(c), list(choices))]

    def close(self) -> None:
        """Stop the actors, and Ray itself when this executor started it."""
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # an actor that never started, or Ray gone
                logger.debug("could not stop a Ray actor", exc_info=True)
        self._actors = []
        if self._started:
            ray.shutdown()
            self._started = False


def make_executor(evaluator: CandidateEvaluator, workers: int = 1,
                  address: str | None = None) -> LocalExecutor | RayExecutor:
    """In this process for one worker and no cluster; on Ray otherwise.

    Example:
        >>> make_executor(lambda choice: 1.0).workers
        1
    """
    if workers <= 1 and address is None:
        return LocalExecutor(evaluator)
    return RayExecutor(evaluator, max(1, workers), address)
