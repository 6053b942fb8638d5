"""Metrics with exact expected values, and latency that behaves on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.footprint import Footprint, model_footprint, tensor_nbytes, tensor_nonzero
from sconce.metrics.timing import TimingSettings, fixed_threads

FAST = TimingSettings(rounds=2, round_seconds=0.01, warmup_seconds=0.01, min_calls=2,
                      batch_size=8)


def test_macs_params_size_of_a_linear_are_exact() -> None:
    values = sconce.measure(nn.Linear(100, 10), example_inputs=torch.randn(1, 100),
                            metrics=["macs", "params", "nonzero_params", "size", "sparsity"])
    assert values == {"macs": 1000.0, "params": 1010.0, "nonzero_params": 1010.0,
                      "size": 4040 / 2**20, "sparsity": 0.0}


def test_macs_of_a_conv_are_exact() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 8*3*3*3 MACs per output pixel
    values = sconce.measure(conv, example_inputs=torch.randn(1, 3, 10, 10), metrics=["macs"])
    assert values["macs"] == 8 * 3 * 3 * 3 * 10 * 10


class FixedPredictions(nn.Module):
    """Predicts class ``x[:, 0]`` (inputs carry the prediction), to test counting."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float()


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7])
def test_accuracy_counts_exactly_whatever_the_batch_size(batch_size: int) -> None:
    predictions = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], dtype=torch.float32)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 0, 1])  # 7 of 10 right
    loader = DataLoader(TensorDataset(predictions[:, None], targets), batch_size=batch_size)
    values = sconce.measure(FixedPredictions(), {"test": loader}, metrics=["accuracy"])
    assert values["accuracy"] == 70.0


def test_sparsity_and_nonzero_count_zeros() -> None:
    layer = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        layer.weight[:, :7] = 0
    footprint = model_footprint(layer)
    assert footprint == Footprint(params=100, nonzero=30, nbytes=400)
    assert footprint.sparsity == pytest.approx(0.7)


def test_tensor_bytes_for_sparse_and_quantized_layouts() -> None:
    dense = torch.eye(4)
    assert tensor_nbytes(dense) == 64
    assert tensor_nbytes(dense.to_sparse_csr()) == 4 * 4 + 4 * 8 + 5 * 8
    assert tensor_nbytes(dense.to_sparse()) == 4 * 4 + 2 * 4 * 8
    q = torch.quantize_per_tensor(torch.randn(10, 10), 0.1, 0, torch.qint8)
    assert tensor_nbytes(q) == 100 + 16
    qc = torch.quantize_per_channel(torch.randn(10, 4), torch.rand(10) + 0.1,
                                    torch.zeros(10, dtype=torch.long), 0, torch.qint8)
    assert tensor_nbytes(qc) == 40 + 10 * 8 + 10 * 8
    assert tensor_nonzero(dense.to_sparse_csr()) == 4


def test_shared_parameters_count_once() -> None:
    first = nn.Linear(4, 4, bias=False)
    second = nn.Linear(4, 4, bias=False)
    second.weight = first.weight
    assert model_footprint(nn.Sequential(first, second)).params == 16


def test_non_persistent_buffers_are_not_shipped() -> None:
    module = nn.Module()
    module.register_buffer("kept", torch.zeros(10))
    module.register_buffer("scratch", torch.zeros(1000), persistent=False)
    assert model_footprint(module).nbytes == 40


def test_latency_is_positive_and_restores_threads_and_mode() -> None:
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).train()
    threads = torch.get_num_threads()
    values = sconce.measure(model, example_inputs=torch.randn(1, 32),
                            metrics=["latency", "latency_batch"], timing=FAST)
    assert values["latency"] > 0 and values["latency_batch"] > 0
    assert model.training
    assert torch.get_num_threads() == threads


def test_fixed_threads_context() -> None:
    before = torch.get_num_threads()
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


class Untraceable(nn.Module):
    """Runs eagerly but refuses the tracer, as models with unsupported operations do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("unsupported operation in tracing")
        return self.fc(x)


def test_macs_of_an_untraceable_model_become_a_note_not_a_crash() -> None:
    from sconce.api import resolve_metrics
    from sconce.context import Context
    from sconce.metrics.measure import measure_with_context

    ctx = Context.for_inputs(torch.ones(1, 3))
    measured = measure_with_context(Untraceable(), ctx, resolve_metrics(["macs"], have_data=False))
    assert measured.values["macs"] is None
    assert "torchprofile" in measured.notes["macs"]


def test_default_metrics_without_data_skip_accuracy() -> None:
    values = sconce.measure(nn.Linear(4, 2), example_inputs=torch.randn(1, 4), timing=FAST)
    assert "accuracy" not in values
    assert {"latency", "latency_batch", "macs", "params", "size", "sparsity"} <= set(values)


def test_measure_needs_data_or_inputs() -> None:
    with pytest.raises(sconce.DataError, match="data= or example_inputs="):
        sconce.measure(nn.Linear(4, 2))


def test_evaluate_reports_nan_for_nothing() -> None:
    from sconce.evaluation import EvalResult

    assert math.isnan(EvalResult(0, 0, 0.0).accuracy)
