"""The search: every scored candidate and the result meet the limits; seeded; infeasible
limits fail early with the smallest achievable value."""

from __future__ import annotations

import pytest

from sconce_nas import InfeasibleConstraint, LatencyTable, Limits, run_search
from sconce_nas.costs import CostModel
from sconce_nas.evaluation import CandidateEvaluator, EvalBatches, LocalExecutor

from conftest import QUICK_TIMING, tiny_data


def _search(supernet, limits, seed=0, trials=12, objective="macs"):
    space = supernet.space
    data = tiny_data()
    costs = CostModel(space, data.example_inputs(1), LatencyTable(QUICK_TIMING))
    evaluator = CandidateEvaluator(supernet, EvalBatches.from_data(data, 2, 64))
    outcome = run_search(space, costs, limits, LocalExecutor(evaluator), objective=objective,
                         trials=trials, population=4, seed=seed)
    return outcome, costs


def test_every_scored_candidate_meets_the_limits(trained_supernet):
    space = trained_supernet.space
    costs = CostModel(space, tiny_data().example_inputs(1), LatencyTable(QUICK_TIMING))
    smallest, largest = costs(space.smallest()), costs(space.largest())
    limits = Limits(macs=(smallest.macs + largest.macs) / 2,
                    params=(smallest.params + largest.params) / 2)
    outcome, costs = _search(trained_supernet, limits)
    assert len(outcome.candidates) == 12
    assert outcome.rejected > 0  # the limits cut the space
    for candidate in outcome.candidates:
        assert candidate.costs.macs <= limits.macs
        assert candidate.costs.params <= limits.params
        assert candidate.costs == costs(candidate.choice)
    best = outcome.best()
    assert best.accuracy == max(c.accuracy for c in outcome.candidates)
    assert not limits.violations(best.costs)
    # the front: no scored candidate is more accurate and cheaper than a front member
    for member in outcome.front:
        assert not any(c.accuracy > member.accuracy and c.costs.macs < member.costs.macs
                       for c in outcome.candidates)


def test_the_same_seed_gives_the_same_trials(trained_supernet):
    def trials(outcome):  # latency predictions are timings: equal only within one table
        return [(c.number, c.choice, c.accuracy, c.costs.macs, c.costs.params)
                for c in outcome.candidates]

    first, _ = _search(trained_supernet, Limits(), seed=3, trials=8)
    second, _ = _search(trained_supernet, Limits(), seed=3, trials=8)
    assert trials(first) == trials(second)
    third, _ = _search(trained_supernet, Limits(), seed=4, trials=8)
    assert trials(third) != trials(first)


def test_a_limit_below_the_smallest_subnet_names_the_smallest_value(trained_supernet):
    space = trained_supernet.space
    costs = CostModel(space, tiny_data().example_inputs(1), LatencyTable(QUICK_TIMING))
    smallest = costs(space.smallest())
    with pytest.raises(InfeasibleConstraint) as caught:
        Limits(macs=smallest.macs / 2).check_feasible(smallest)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{smallest.macs:.4g} MACs" in message and "smallest subnet" in message


def test_search_api_refuses_an_infeasible_target_before_training(tmp_path):
    with pytest.raises(InfeasibleConstraint, match=r"target MACs 10 is below the smallest "
                                                   r"subnet of the search space \(\d"):
        import sconce_nas

        sconce_nas.search(tiny_data(), {"target_macs": 10}, workers=1, timing=QUICK_TIMING,
                          work_dir=tmp_path, progress=False,
                          space_options={"stages": [[8, 2]], "head_channels": 16})
    assert not list(tmp_path.glob("nas/supernet-*"))  # nothing was trained


def test_infeasible_target_is_one_line_from_the_cli(tmp_path):
    from sconce.cli import main

    code = main(["nas", "--data", "digits", "--target-macs", "10", "--workers", "1",
                 "--out", str(tmp_path / "out")])
    assert code == 2


def test_finalists_are_held_to_the_limit_as_timed_again_at_the_choice(trained_supernet):
    from sconce_nas.run import PAIRED_PASSES, choose

    space = trained_supernet.space
    data = tiny_data()
    table = LatencyTable(QUICK_TIMING)
    example = data.example_inputs(1)
    outcome, _ = _search(trained_supernet, Limits(), trials=8)
    evaluator = CandidateEvaluator(trained_supernet, EvalBatches.from_data(data, 2, 64))
    val = EvalBatches.from_data(data, 0, None).val
    timed = []

    def limit_now() -> float:  # the reference "got slower": the limit is met after all
        timed.append(1)
        return 1e3

    # the limit as first timed (1 us) rejects every candidate; the re-timed one admits them
    chosen, scores, measured, limit = choose(outcome, evaluator, val, table, space, example,
                                             Limits(latency_ms=1e-3), 3, limit_now)
    assert limit == 1e3 and len(scores) == 3 and len(timed) == 3 * PAIRED_PASSES
    assert measured is not None and measured < limit
    assert chosen.number in scores
    # without re-timing, the first limit holds (none meets it: the fastest is taken)
    _, scores, measured, limit = choose(outcome, evaluator, val, table, space, example,
                                        Limits(latency_ms=1e-3), 3)
    assert measured is None and limit is None and len(scores) == 1
    # a reference timed in a slow spell once (a loose limit) is timed again: its fastest holds
    spells = iter([1e3] + [1e-3] * 100)
    _, scores, measured, limit = choose(outcome, evaluator, val, table, space, example,
                                        Limits(latency_ms=1e-3), 3, lambda: next(spells))
    assert measured is None and len(scores) == 1
