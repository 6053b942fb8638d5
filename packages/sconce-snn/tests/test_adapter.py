"""The spiking adapter: detection, state, encodings, readout, losses, training."""

from __future__ import annotations

import copy

import pytest
import snntorch as snn
import snntorch.functional as SF
import snntorch.utils as snn_utils
import torch
from snn_helpers import LoopNet, Net, relu_cnn
from torch import nn

import sconce
from sconce.errors import ConfigError, ModelError
from sconce_snn import SpikeRecord, SpikingAdapter, UnsupportedSpikingModel, reset_states
from sconce_snn.encoding import encode


def test_the_adapter_detects_snns_and_leaves_anns_alone() -> None:
    assert isinstance(sconce.get_adapter(Net()), SpikingAdapter)
    assert isinstance(sconce.get_adapter(LoopNet()), SpikingAdapter)
    assert type(sconce.get_adapter(relu_cnn())) is sconce.ClassifierAdapter
    assert type(sconce.get_adapter(nn.Linear(2, 2))) is sconce.ClassifierAdapter


def test_state_is_reset_between_batches() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    adapter = SpikingAdapter(num_steps=8)
    first, second = 3 * torch.rand(4, 1, 8, 8), 3 * torch.rand(4, 1, 8, 8)
    fresh = adapter.forward(copy.deepcopy(model), second)
    adapter.forward(model, first)
    after_another_batch = adapter.forward(model, second)
    assert torch.equal(after_another_batch.spikes, fresh.spikes)
    assert torch.equal(after_another_batch.membrane, fresh.membrane)
    # what the adapter prevents: the same model run without a reset carries its state over
    for _ in range(8):
        model(first)
    leaked = torch.stack([model(second)[1] for _ in range(8)])
    assert not torch.allclose(leaked, fresh.membrane)


def test_no_state_survives_a_call_even_in_training() -> None:
    model = Net().train()
    record = SpikingAdapter(num_steps=3).forward(model, torch.rand(2, 1, 8, 8))
    record.spikes.sum().backward()
    assert all(m.mem.numel() == 0 for m in model.modules() if isinstance(m, snn.Leaky))
    copy.deepcopy(model)  # no tensor of an autograd graph is left to break the copy


def test_reset_reaches_deep_copies_that_snntorch_utils_reset_misses() -> None:
    model = copy.deepcopy(nn.Sequential(snn.Leaky(beta=0.5, init_hidden=True)))
    model(torch.ones(1, 3))
    snn_utils.reset(model)
    assert float(model[0].mem.abs().sum()) > 0  # snnTorch's registry does not know the copy
    reset_states(model)
    assert model[0].mem.numel() == 0


def test_unsupported_neurons_are_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4), snn.SLSTM(4, 4), snn.LeakyParallel(4, 4))
    with pytest.raises(UnsupportedSpikingModel, match=r"1 \(SLSTM\), 2 \(LeakyParallel\)"):
        sconce.get_adapter(model)


def test_mixing_implicit_and_explicit_state_is_named() -> None:
    model = nn.Sequential(snn.Leaky(beta=0.5, init_hidden=True), snn.Leaky(beta=0.5))
    with pytest.raises(UnsupportedSpikingModel, match="neurons 0 have init_hidden=True but 1"):
        sconce.get_adapter(model)


def test_a_model_with_its_own_time_loop_runs_as_is() -> None:
    model = LoopNet(num_steps=6)
    record = SpikingAdapter().forward(model, torch.rand(3, 1, 8, 8))
    assert record.spikes.shape == (6, 3, 4) and record.membrane is not None
    with pytest.raises(ConfigError, match="runs its own time loop"):
        SpikingAdapter(encoding="rate").forward(model, torch.rand(3, 1, 8, 8))


def test_encodings() -> None:
    x = torch.tensor([[0.0, 0.25, 1.0]])
    direct = encode(x, "direct", 5)
    assert direct.shape == (5, 1, 3) and direct.data_ptr() == x.data_ptr()  # a view
    rate = encode(x, "rate", 400, generator_seed=0)
    assert set(rate.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(rate, encode(x, "rate", 400, generator_seed=0))
    assert rate[:, 0].mean(0).tolist()[0] == 0.0 and rate[:, 0, 2].mean() == 1.0
    assert abs(float(rate[:, 0, 1].mean()) - 0.25) < 0.07
    latency = encode(x, "latency", 10)
    assert latency[:, 0].sum(0).tolist() == [0.0, 1.0, 1.0]
    assert int(latency[:, 0, 2].argmax()) < int(latency[:, 0, 1].argmax())  # brighter first
    standardised = encode(torch.tensor([[-2.0, 0.0, 2.0]]), "latency", 10)
    assert standardised[:, 0].sum(0).tolist() == [0.0, 1.0, 1.0]  # mapped per sample
    with pytest.raises(ConfigError, match="encoding must be one of"):
        SpikingAdapter(encoding="poisson")


def test_rate_encoded_evaluation_repeats() -> None:
    model = Net().eval()
    adapter = SpikingAdapter(num_steps=5, encoding="rate")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(adapter.forward(model, x).spikes, adapter.forward(model, x).spikes)


def test_readout_and_losses() -> None:
    spikes = torch.zeros(4, 2, 3)
    spikes[:, 0, 1] = 1.0
    spikes[:2, 1, 2] = 1.0
    membrane = torch.randn(4, 2, 3)
    record = SpikeRecord(spikes, membrane)
    targets = torch.tensor([1, 2])
    adapter = SpikingAdapter()
    assert adapter.predict(record).tolist() == [1, 2]
    assert torch.allclose(adapter.loss(record, targets), SF.ce_rate_loss()(spikes, targets))
    by_membrane = SpikingAdapter(readout="membrane")
    assert torch.equal(by_membrane.logits(record), membrane.max(0).values)
    assert torch.allclose(by_membrane.loss(record, targets),
                          SF.ce_max_membrane_loss()(membrane, targets))
    # a user's criterion: snnTorch losses get the record, torch losses the spike counts
    assert torch.allclose(adapter.criterion_loss(SF.ce_count_loss(), record, targets),
                          SF.ce_count_loss()(spikes, targets))
    assert torch.allclose(adapter.criterion_loss(nn.CrossEntropyLoss(), record, targets),
                          nn.functional.cross_entropy(spikes.sum(0), targets))
    with pytest.raises(ModelError, match="output=True"):
        by_membrane.logits(SpikeRecord(spikes, None))


def test_options_carried_by_the_model() -> None:
    model = Net()
    model.sconce_snn = {"num_steps": 7, "readout": "membrane"}
    adapter = sconce.get_adapter(model)
    assert (adapter.num_steps, adapter.readout) == (7, "membrane")
    model.sconce_snn = {"steps": 7}
    with pytest.raises(ConfigError, match="unknown spiking adapter option 'steps'"):
        sconce.get_adapter(model)


def test_the_core_loop_trains_an_snn_with_surrogate_gradients(data) -> None:
    torch.manual_seed(0)
    model = Net()
    before = sconce.measure(model, data, metrics=["accuracy"])["accuracy"]
    sconce.train(model, data, epochs=3, lr=1e-2, progress=False)
    after = sconce.measure(model, data, metrics=["accuracy"])["accuracy"]
    assert after >= 90.0 > before
    beta = model.lif1.beta
    assert beta.shape == (6, 1, 1) and not torch.allclose(beta, torch.full_like(beta, 0.6))


def test_a_tutorial_style_model_trains_with_a_snntorch_criterion(data) -> None:
    torch.manual_seed(0)
    model = LoopNet(num_steps=8)
    sconce.train(model, data, epochs=3, lr=1e-2, progress=False, criterion=SF.mse_count_loss())
    assert sconce.measure(model, data, metrics=["accuracy"])["accuracy"] >= 90.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_snn_runs_and_is_measured_on_cuda(data) -> None:
    model = Net().cuda()
    adapter = SpikingAdapter(num_steps=5, encoding="rate")
    x = next(iter(data.test))[0].cuda()
    record = adapter.forward(model.eval(), x)
    assert record.spikes.is_cuda and torch.equal(record.spikes, adapter.forward(model, x).spikes)
    values = sconce.measure(model, data, device="cuda", adapter=adapter,
                            metrics=["accuracy", "spike_rate", "synops"])
    assert values["synops"] > 0
