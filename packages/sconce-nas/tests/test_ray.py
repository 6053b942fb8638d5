"""Candidate scoring on a 2-worker local Ray instance gives the one-process search exactly."""

from __future__ import annotations

import pytest

from sconce_nas import LatencyTable, Limits, run_search
from sconce_nas.costs import CostModel
from sconce_nas.evaluation import CandidateEvaluator, EvalBatches, LocalExecutor

from conftest import QUICK_TIMING, tiny_data

ray = pytest.importorskip("ray")


def test_two_ray_workers_search_exactly_like_one_process(trained_supernet):
    from sconce_nas.executors import RayExecutor

    space, data = trained_supernet.space, tiny_data()
    costs = CostModel(space, data.example_inputs(1), LatencyTable(QUICK_TIMING))
    evaluator = CandidateEvaluator(trained_supernet, EvalBatches.from_data(data, 2, 96))
    options = dict(objective="latency_ms", trials=12, population=4, seed=0)
    local = run_search(space, costs, Limits(), LocalExecutor(evaluator), **options)

    executor = RayExecutor(evaluator, workers=2)
    try:
        assert len(ray.nodes()) == 1  # a local instance ...
        assert ray.cluster_resources()["CPU"] == 2  # ... sized for two 1-thread workers
        on_ray = run_search(space, costs, Limits(), executor, **options)
    finally:
        executor.close()
    assert not ray.is_initialized()  # the executor stops the Ray it started
    assert [c.to_dict() for c in on_ray.candidates] == [c.to_dict() for c in local.candidates]
    assert [c.number for c in on_ray.front] == [c.number for c in local.front]


def test_ray_that_cannot_start_is_one_clear_error(trained_supernet, monkeypatch):
    from sconce_nas.executors import RayExecutor, RayUnavailable

    def node_start_timeout(*args, **kwargs):  # what Ray raises when its node is too slow
        raise Exception("The current node timed out during startup. This could happen "
                        "because some of the raylet failed to startup or the GCS has "
                        "become overloaded.\nmore lines")

    monkeypatch.setattr(ray, "init", node_start_timeout)
    evaluator = CandidateEvaluator(trained_supernet,
                                   EvalBatches.from_data(tiny_data(), 2, 96))
    with pytest.raises(RayUnavailable) as caught:
        RayExecutor(evaluator, workers=2)
    message = str(caught.value)
    assert "\n" not in message
    assert "a local Ray node could not start 2 worker(s)" in message
    assert "timed out during startup" in message and "workers=1" in message
    assert not ray.is_initialized()
