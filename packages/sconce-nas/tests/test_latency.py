"""The latency table's timer: the fastest call, on the asked threads; units timed in two
passes; a table measured with another statistic is measured again, a kept one's units are
timed again; predictions follow a fitted line; a ratio limit uses the search's own timer."""

from __future__ import annotations

import copy
import json
import time

import torch
from torch import nn

from sconce_nas.costs import resolve_limits
from sconce_nas.latency import MIN_CALLS, LatencyTable, fastest_ms
from sconce_nas.space import declare_family

from conftest import QUICK_TIMING


def test_fastest_ms_is_the_fastest_call_on_the_asked_threads() -> None:
    durations = iter([0.02] * 3 + [0.001] * 1000)  # slow first calls, then fast ones
    seen_threads = []

    def call() -> None:
        seen_threads.append(torch.get_num_threads())
        time.sleep(next(durations))

    before = torch.get_num_threads()
    ms = fastest_ms(call, threads=1, seconds=0.0, warmup_seconds=0.0)
    assert 1.0 <= ms < 5.0  # the 1 ms calls, not the 20 ms ones
    assert len(seen_threads) == 1 + MIN_CALLS and set(seen_threads) == {1}
    assert torch.get_num_threads() == before


def test_a_table_timed_with_another_statistic_is_measured_again(tmp_path) -> None:
    path = tmp_path / "table.json"
    table = LatencyTable(QUICK_TIMING, path=path)
    table.entries, table.overhead_ms, table.calibrated = {"unit": 1.0}, 0.1, True
    table.save()
    assert LatencyTable(QUICK_TIMING, path=path).entries == {"unit": 1.0}
    saved = json.loads(path.read_text())
    del saved["header"]["statistic"]  # a table from before the fastest-call timer
    path.write_text(json.dumps(saved))
    stale = LatencyTable(QUICK_TIMING, path=path)
    assert stale.entries == {} and not stale.calibrated


def test_a_ratio_latency_limit_divides_the_given_timer() -> None:
    timed = []

    def timer(model: nn.Module, example: torch.Tensor) -> float:
        timed.append(model)
        return 3.0

    reference = nn.Linear(4, 2)
    limits = resolve_limits({"latency_ms": "2x"}, reference, torch.randn(1, 4), QUICK_TIMING,
                            latency=timer)
    assert limits.latency_ms == 1.5 and timed == [reference]


class _SlowFirst(nn.Module):
    """Sleeps 8 ms per call for its first ``slow`` calls, then 1 ms."""

    def __init__(self, slow: int) -> None:
        super().__init__()
        self.calls, self.slow = 0, slow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(0.008 if self.calls <= self.slow else 0.001)
        return x


def test_a_unit_timed_while_the_machine_was_slow_is_timed_again() -> None:
    unit = _SlowFirst(slow=2 + MIN_CALLS)  # the capture call and the whole first pass
    space = declare_family("test-slow-unit", {"n": (1,)}, lambda c: nn.Sequential(unit))
    table = LatencyTable(QUICK_TIMING)
    ms = table.unit_sum(space, nn.Sequential(unit), torch.randn(1, 4))
    assert 1.0 <= ms < 5.0  # the second pass's fast calls, not the first pass's 8 ms


class _Sleeps(nn.Module):
    """A unit whose every call sleeps ``seconds`` (a machine whose speed can be set)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x

    def extra_repr(self) -> str:
        return "sleeping unit"  # the same table key whatever its speed


def test_a_table_kept_from_a_faster_moment_is_re_anchored_to_the_speed_now() -> None:
    unit = _Sleeps(0.002)
    space = declare_family("test-rescale", {"n": (1, 2, 3)},
                           lambda c: nn.Sequential(*(unit for _ in range(c["n"]))))
    space.latency_units = lambda model: list(model)  # type: ignore[method-assign]
    example = torch.randn(1, 4)
    table = LatencyTable(QUICK_TIMING)
    table.deployed = lambda space, choice: space.build(choice)  # type: ignore[method-assign]
    choices = [{"n": 1}, {"n": 3}]
    table.calibrate(space, example, choices)
    before = table.predict(space, space.build({"n": 2}), example)
    unit.seconds = 0.006  # the machine got 3x slower since the table was measured
    scale = table.rescale(space, example, choices)
    assert 2.0 < scale < 4.0
    after = table.predict(space, space.build({"n": 2}), example)
    measured = table.measure(space.build({"n": 2}), example)
    assert abs(after - measured) < abs(before - measured)
    assert abs(after / measured - 1) < 0.25


def test_the_check_re_anchors_on_the_calibration_subnets_timed_among_the_checked_ones() -> None:
    unit = _Sleeps(0.002)
    space = declare_family("test-check-anchors", {"n": (1, 2, 3, 4)},
                           lambda c: nn.Sequential(*(unit for _ in range(c["n"]))))
    space.latency_units = lambda model: list(model)  # type: ignore[method-assign]
    example = torch.randn(1, 4)
    table = LatencyTable(QUICK_TIMING)
    timed: list[int] = []
    build = space.build

    def deployed(space: object, choice: dict[str, int]) -> nn.Module:
        timed.append(choice["n"])
        return build(choice)

    table.deployed = deployed  # type: ignore[method-assign]
    anchors, checked = [{"n": 1}, {"n": 4}], [{"n": 2}, {"n": 3}]
    table.calibrate(space, example, anchors)
    stale = copy.deepcopy(table)  # its units timed already: it will not time them again
    unit.seconds = 0.006  # 3x slower since the calibration
    timed.clear()
    check = table.check(space, example, checked, anchors=anchors)
    assert sorted(timed) == [1, 2, 3, 4]  # the anchors are timed, not checked
    assert len(check.predicted) == len(check.measured) == 2
    assert 2.0 < table.scale < 4.0
    assert check.within(0.25) == 1.0
    assert stale.check(space, example, checked).within(0.25) == 0.0  # without anchors: 3x off


class _Between(_Sleeps):
    """What runs between two units in a whole subnet and is in no unit (a cache refill)."""

    def extra_repr(self) -> str:
        return "between units"


def test_predictions_follow_a_line_when_subnets_cost_more_than_their_units() -> None:
    unit, between = _Sleeps(0.002), _Between(0.001)
    space = declare_family(
        "test-line", {"n": (1, 2, 3, 4, 5)},
        lambda c: nn.Sequential(*(m for _ in range(c["n"]) for m in (unit, between))))
    space.latency_units = lambda model: [m for m in model  # type: ignore[method-assign]
                                         if type(m) is _Sleeps]
    example = torch.randn(1, 4)
    table = LatencyTable(QUICK_TIMING)
    table.deployed = lambda space, choice: space.build(choice)  # type: ignore[method-assign]
    anchors = [{"n": 1}, {"n": 3}, {"n": 5}]
    table.calibrate(space, example, anchors)
    assert 1.3 < table.scale < 1.7  # each 2 ms unit costs 3 ms in a whole subnet
    check = table.check(space, example, [{"n": 2}, {"n": 4}], anchors=anchors)
    assert check.within(0.10) == 1.0  # a constant gap would be 2 ms off at one end


def test_a_kept_tables_units_are_timed_again_in_a_new_run(tmp_path) -> None:
    unit = _Sleeps(0.002)
    space = declare_family("test-kept", {"n": (1, 2)},
                           lambda c: nn.Sequential(*(unit for _ in range(c["n"]))))
    space.latency_units = lambda model: list(model)  # type: ignore[method-assign]
    example = torch.randn(1, 4)
    path = tmp_path / "table.json"
    first = LatencyTable(QUICK_TIMING, path=path)
    first.unit_sum(space, space.build({"n": 1}), example)
    first.save()
    unit.seconds = 0.006  # the machine is slower in the next run
    kept = LatencyTable(QUICK_TIMING, path=path)
    assert len(kept.entries) == 1
    assert 10.0 < kept.unit_sum(space, space.build({"n": 2}), example) < 16.0  # 2 x 6 ms
    unit.seconds = 0.002
    assert 10.0 < kept.unit_sum(space, space.build({"n": 2}), example) < 16.0  # once per run
    kept.save()
    trusted = LatencyTable(QUICK_TIMING, path=path, retime_kept=False)
    assert 10.0 < trusted.unit_sum(space, space.build({"n": 2}), example) < 16.0  # not timed
