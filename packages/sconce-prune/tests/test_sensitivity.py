"""The structure-agnostic sensitivity analysis and ratio allocation."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sconce.errors import ConfigError, TechniqueError
from sconce.evaluation import EvalResult
from sconce_prune.sensitivity import (
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
    for grid in ((), (0.5, 0.3), (0.0, 0.5), (0.5, 1.0)):
        with pytest.raises(ConfigError):
            scan_sensitivity(["robust"], evaluate, ratios=grid)


def test_plot_writes_a_png(sensitivity, tmp_path) -> None:
    chosen = choose_ratios(sensitivity, SIZES, evaluate, sparsity=0.5)
    path = plot_sensitivity(sensitivity, tmp_path / "s.png", chosen)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
