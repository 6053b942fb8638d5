"""snn.convert: threshold balancing, spiking max-pooling, accuracy vs steps, reload."""

from __future__ import annotations

import pytest
import torch
from snn_helpers import relu_cnn
from torch import nn

import sconce
from sconce_snn import SpikingAdapter
from sconce_snn.convert import (
    HISTOGRAM_BINS,
    IFNeuron,
    SpikingMaxPool2d,
    calibrate_thresholds,
)
from sconce_snn.steps import accuracy_by_steps


def test_thresholds_are_percentiles_within_one_histogram_bin() -> None:
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    batches = [torch.arange(0.0, 500.0).reshape(5, 100), torch.arange(500.0, 1000.0)[None]]
    bin_width = 999.0 / HISTOGRAM_BINS
    for percentile, exact in ((99.0, 990.0), (90.0, 900.0), (100.0, 999.0)):
        # nearest rank: the 10th / 100th / 1st largest of 0..999
        threshold = calibrate_thresholds(model, batches, percentile)["1"]
        assert exact <= threshold <= exact + bin_width


def test_a_relu_used_twice_is_refused() -> None:
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    with pytest.raises(sconce.ModelError, match="used at several places"):
        calibrate_thresholds(model, [torch.randn(3, 2)], 99.0)


def test_the_spiking_max_pool_follows_the_most_active_input() -> None:
    pool = SpikingMaxPool2d(2)
    torch.manual_seed(0)
    rates = torch.tensor([0.2, 0.7, 0.4, 0.1])
    spikes = (torch.rand(400, 4) < rates).float()
    passed = torch.stack([pool(s.reshape(1, 1, 2, 2)).flatten() for s in spikes])
    assert abs(float(passed.mean()) - 0.7) < 0.08  # the max rate, not P(any spike) = 0.87
    pool.reset_state()
    assert pool.accumulated.numel() == 0


def test_converted_cnn_matches_the_ann_and_reloads(trained_ann, data, tmp_path) -> None:
    ann_accuracy = sconce.measure(trained_ann, data, metrics=["accuracy"])["accuracy"]
    recipe = [("snn.convert", {"num_steps": 64, "curve_steps": [4, 16, 64],
                               "curve_samples": 64})]
    result = sconce.compress(trained_ann, data, recipe=recipe, progress=False, out=tmp_path,
                             metrics=["accuracy", "spike_rate", "synops"])
    original, converted = result.report.stages
    assert original.values["accuracy"] == ann_accuracy
    assert converted.values["accuracy"] >= ann_accuracy - 3.0
    assert "spike_rate" not in original.values and converted.values["synops"] > 0
    assert sum(isinstance(m, IFNeuron) for m in result.model.modules()) == 3
    assert (tmp_path / "artifacts" / "snn-convert-accuracy-vs-steps.png").is_file()
    curve = converted.notes["accuracy by time steps (val)"]
    assert set(curve) == {"4 steps", "16 steps", "64 steps", "ANN"}
    assert curve["64 steps"] >= curve["4 steps"]
    loaded = sconce.load(tmp_path, model=relu_cnn())
    adapter = sconce.get_adapter(loaded)
    assert isinstance(adapter, SpikingAdapter) and adapter.num_steps == 64
    x = next(iter(data.test))[0]
    assert torch.equal(adapter.forward(loaded, x).spikes,
                       adapter.forward(result.model, x).spikes)


def test_accuracy_by_steps_equals_separate_runs(trained_ann, data) -> None:
    from sconce_snn.convert import convert_modules

    model = convert_modules(trained_ann, calibrate_thresholds(
        trained_ann, [next(iter(data.train))[0]], 99.9), pools=["3"], initial_membrane=0.5)
    batches = list(data.test)[:2]
    curve = accuracy_by_steps(model, batches, SpikingAdapter(), (3, 9))
    for steps in (3, 9):
        alone = accuracy_by_steps(model, batches, SpikingAdapter(num_steps=steps), (steps,))
        assert alone[steps] == curve[steps]


@pytest.mark.parametrize(("layer", "message"), [
    (nn.GELU(), r"cannot convert 2 \(GELU\)"),
    (nn.AdaptiveMaxPool2d(2), r"cannot convert 2 \(AdaptiveMaxPool2d\)"),
])
def test_layers_without_a_spiking_equivalent_are_named(layer, message, data) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), layer, nn.Flatten(),
                          nn.LazyLinear(4))
    model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(sconce.ModelError, match=message):
        sconce.compress(model, data, recipe=["snn.convert"], progress=False)


def test_a_functional_relu_is_named(data) -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x.flatten(1)))

    with pytest.raises(sconce.ModelError, match="relu called as a function"):
        sconce.compress(Functional(), data, recipe=["snn.convert"], progress=False)
