"""The structure-agnostic sensitivity analysis, ratio allocation, budget bisection and plot
(one framework for pruning, quantization, sparsity and search)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

import pytest

from sconce.budget import bisect
from sconce.errors import ConfigError, TechniqueError
from sconce.evaluation import EvalResult
from sconce.plotting import save_png
from sconce.sensitivity import (
    allocate,
    choose_ratios,
    plot_sensitivity,
    scan_sensitivity,
)

SIZES = {"robust": 1000, "fragile": 200, "middle": 500}
FRAGILITY = {"robust": 0.5, "fragile": 30.0, "middle": 4.0}


def evaluate(ratios: Mapping[str, float]) -> EvalResult:
    """A model whose accuracy drops by fragility * ratio^3 per layer; the loss follows."""
    drop = sum(FRAGILITY[name] * r**3 for name, r in ratios.items())
    correct = max(0, round(10_000 * (0.95 - drop / 100)))
    return EvalResult(correct=correct, total=10_000, loss_sum=10_000 * (0.2 + drop / 10))


@pytest.fixture
def sensitivity():
    return scan_sensitivity(list(SIZES), evaluate, ratios=(0.2, 0.4, 0.6, 0.8, 0.9, 0.95))


def test_scan_records_one_curve_per_layer(sensitivity) -> None:
    assert sensitivity.layers == list(SIZES)
    assert sensitivity.baseline_accuracy == pytest.approx(95.0)
    fragile = sensitivity.curves["fragile"]
    assert fragile.accuracy[-1] < fragile.accuracy[0] < 95.0 + 1e-9
    assert sensitivity.to_dict()["curves"]["robust"]["ratios"][0] == 0.2


@pytest.mark.parametrize("target", [0.3, 0.6, 0.8])
def test_allocation_meets_the_target_exactly_and_spares_fragile_layers(sensitivity,
                                                                       target) -> None:
    ratios = allocate(sensitivity, SIZES, target)
    removed = sum(ratios[n] * s for n, s in SIZES.items())
    assert removed == pytest.approx(target * sum(SIZES.values()), rel=1e-9)
    assert ratios["robust"] >= ratios["middle"] >= ratios["fragile"]
    uniform_cost = sum(FRAGILITY[n] * target**3 for n in SIZES)
    assert sum(FRAGILITY[n] * r**3 for n, r in ratios.items()) < uniform_cost


def test_allocation_reports_an_unreachable_target(sensitivity) -> None:
    with pytest.raises(TechniqueError, match="at most"):
        allocate(sensitivity, SIZES, 0.9, max_ratio=0.5)


def test_choose_ratios_checks_candidates_together_and_keeps_the_best(sensitivity) -> None:
    bad = {"robust": 0.0, "fragile": 0.99, "middle": 0.99}
    chosen = choose_ratios(sensitivity, SIZES, evaluate, sparsity=0.6,
                           candidates={"silly": lambda s: bad})
    assert chosen.method == "sensitivity"
    assert set(chosen.candidates) == {"sensitivity", "uniform", "silly"}
    assert chosen.accuracy == max(c["accuracy"] for c in chosen.candidates.values())
    assert chosen.candidates["silly"]["accuracy"] < chosen.candidates["uniform"]["accuracy"]
    assert chosen.sparsity == pytest.approx(0.6)


def test_choose_ratios_under_an_accuracy_budget(sensitivity) -> None:
    chosen = choose_ratios(sensitivity, SIZES, evaluate, max_accuracy_drop=1.0)
    assert chosen.accuracy_drop <= 1.0
    assert chosen.sparsity > 0.5
    looser = choose_ratios(sensitivity, SIZES, evaluate, max_accuracy_drop=5.0)
    assert looser.sparsity > chosen.sparsity
    assert all(p["accuracy"] <= 95.0 for p in chosen.probes)


def test_choose_ratios_needs_exactly_one_goal(sensitivity) -> None:
    with pytest.raises(ConfigError, match="either sparsity or max_accuracy_drop"):
        choose_ratios(sensitivity, SIZES, evaluate)
    with pytest.raises(ConfigError):
        choose_ratios(sensitivity, SIZES, evaluate, sparsity=0.5, max_accuracy_drop=1.0)


def test_bad_ratio_grids_are_config_errors() -> None:
    for grid in ((), (0.5, 0.3), (0.0, 0.5), (0.5, 1.5)):
        with pytest.raises(ConfigError):
            scan_sensitivity(["robust"], evaluate, ratios=grid)


def test_a_whole_layer_scan_gives_each_layers_drop() -> None:
    """Quantization's scan: each layer converted alone (ratio 1.0), nothing in between."""
    sens = scan_sensitivity(list(SIZES), evaluate, ratios=(1.0,))
    drops = sens.drops()
    assert drops["fragile"] > drops["middle"] > drops["robust"] > 0
    assert drops["fragile"] == pytest.approx(30.0, abs=0.01)


def test_plot_writes_a_png(sensitivity, tmp_path) -> None:
    chosen = choose_ratios(sensitivity, SIZES, evaluate, sparsity=0.5)
    path = save_png(plot_sensitivity(sensitivity, chosen=chosen.ratios), tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bars = plot_sensitivity(scan_sensitivity(list(SIZES), evaluate, ratios=(1.0,)),
                            chosen={"fragile": 1.0})
    assert len(bars.axes[0].patches) == len(SIZES)


def test_plots_leave_matplotlib_global_state_alone(tmp_path) -> None:
    """A user's notebook backend survives: no matplotlib.use, no pyplot."""
    script = f"""
import sys, matplotlib
matplotlib.use("svg")
from sconce.plotting import save_png
from sconce.report import MetricInfo, Report, StageResult
from sconce.sensitivity import Curve, Sensitivity, plot_sensitivity
report = Report(metrics=[MetricInfo("size", "Size", "MiB", False)],
                stages=[StageResult("Original", values={{"size": 4.0}})])
report.plot({str(tmp_path / "r.png")!r})
sens = Sensitivity(90.0, 0.3, {{"fc": Curve("fc", (0.5,), (80.0,), (0.9,))}})
save_png(plot_sensitivity(sens), {str(tmp_path / "s.png")!r})
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["svg", "False"]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_bisect_largest_and_smallest_with_their_probes() -> None:
    calls: list[float] = []

    def drop(sparsity: float) -> float:  # accuracy drop grows with sparsity
        calls.append(sparsity)
        return 10 * sparsity**2

    found = bisect(drop, lambda d: d <= 1.0, 0.0, 0.95, tolerance=0.01, try_high_first=True)
    assert found.value == pytest.approx(0.3162, abs=0.01) and found.result <= 1.0
    assert calls[0] == 0.95 and len(calls) == len(found.probes)
    assert [p.accepted for p in found.probes] == [p.result <= 1.0 for p in found.probes]
    everything = bisect(drop, lambda d: d <= 100.0, 0.0, 0.95, try_high_first=True)
    assert everything.value == 0.95 and len(everything.probes) == 1
    fewest = bisect(lambda n: n * 1.5, lambda v: v >= 6, 1, 10, want="smallest", integer=True)
    assert fewest.value == 4 and fewest.result == 6.0
    none = bisect(lambda n: n, lambda v: v > 99, 1, 10, want="smallest", integer=True)
    assert not none.found and none.result is None
    with pytest.raises(ConfigError):
        bisect(drop, bool, 1.0, 0.0)
