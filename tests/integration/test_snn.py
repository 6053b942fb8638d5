"""Spiking networks through the other plugins' techniques: magnitude / gradual pruning,
channel pruning (per-channel neuron parameters pruned with their channels), weight-only
int8 of sconce-quant, and the original attribute API with ``snn=True``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce

pytest.importorskip("sconce_snn")
pytest.importorskip("sconce_prune")
snn = pytest.importorskip("snntorch")

from sconce_snn import SpikingAdapter  # noqa: E402

QUICK = sconce.TimingSettings(threads=1, rounds=1, round_seconds=0.02, warmup_seconds=0.02,
                              batch_size=16)
METRICS = ["accuracy", "params", "nonzero_params", "sparsity", "size", "spike_rate", "synops"]
STEPS = 6


class SpikingConvNet(nn.Module):
    """Conv -> Leaky -> Conv -> Leaky -> Linear -> Leaky, every neuron with a learnable
    beta and threshold per channel."""

    def __init__(self) -> None:
        super().__init__()
        grad = snn.surrogate.fast_sigmoid(slope=25)

        def neuron(channels: int, spatial: bool = True, **options) -> nn.Module:
            shape = (channels, 1, 1) if spatial else (channels,)
            return snn.Leaky(beta=torch.full(shape, 0.7), learn_beta=True,
                             threshold=torch.full(shape, 1.0), learn_threshold=True,
                             spike_grad=grad, init_hidden=True, **options)

        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.lif1 = neuron(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.lif2 = neuron(32)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32 * 4 * 4, 4)
        self.lif3 = neuron(4, spatial=False, output=True)

    def forward(self, x: torch.Tensor):
        x = self.lif1(self.pool(self.conv1(x)))
        return self.lif3(self.fc(self.flatten(self.lif2(self.conv2(x)))))


def _blobs(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % 4
    images = 0.1 * torch.rand(samples, 1, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[index, 0, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 0.8
    return TensorDataset(images, labels)


@pytest.fixture(scope="module")
def data() -> sconce.Data:
    return sconce.Data(train=DataLoader(_blobs(192, 0), batch_size=32, shuffle=True),
                       val=DataLoader(_blobs(64, 1), batch_size=32),
                       test=DataLoader(_blobs(128, 2), batch_size=32),
                       name="blobs", num_classes=4, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def trained(data: sconce.Data) -> SpikingConvNet:
    torch.manual_seed(0)
    model = SpikingConvNet()
    sconce.train(model, data, epochs=3, lr=1e-2, progress=False, device="cpu",
                 adapter=SpikingAdapter(num_steps=STEPS))
    return model


def _compress(model: nn.Module, data: sconce.Data, recipe: list, out: Path, **options):
    return sconce.compress(model, data, recipe=recipe, out=out, metrics=METRICS, timing=QUICK,
                           progress=False, device="cpu",
                           adapter=SpikingAdapter(num_steps=STEPS), **options)


def _same_outputs(a: nn.Module, b: nn.Module, data: sconce.Data) -> None:
    x = next(iter(data.test))[0]
    adapter = SpikingAdapter(num_steps=STEPS)
    first, second = adapter.forward(a, x), adapter.forward(b, x)
    torch.testing.assert_close(first.membrane, second.membrane, rtol=0, atol=0)


@pytest.mark.parametrize(("technique", "config"), [
    ("prune.magnitude", {"sparsity": 0.5}),
    ("prune.gmp", {"sparsity": 0.5, "allocation": "uniform"}),
])
def test_unstructured_pruning_of_an_snn(technique: str, config: dict, trained, data,
                                        tmp_path) -> None:
    result = _compress(copy.deepcopy(trained), data, [(technique, config)], tmp_path,
                       finetune_epochs=0.5)
    original, pruned = result.report.stages
    assert pruned.values["sparsity"] > 20.0
    assert pruned.values["synops"] < original.values["synops"]
    assert pruned.values["accuracy"] >= original.values["accuracy"] - 5.0
    _same_outputs(sconce.load(tmp_path, model=SpikingConvNet()), result.model, data)


def test_channel_pruning_slices_per_channel_neuron_parameters(trained, data,
                                                              tmp_path) -> None:
    # fold_bn off: there is no batch norm, and the folding pass traces the model without
    # the layer rules plugins describe (the pruning itself uses them)
    recipe = [("prune.channel", {"sparsity": 0.5, "fold_bn": False})]
    result = _compress(copy.deepcopy(trained), data, recipe, tmp_path, finetune_epochs=0)
    original, pruned = result.report.stages
    model = result.model
    assert model.conv1.out_channels < 16 and model.conv2.out_channels < 32
    kept_inputs: list[int] | None = None  # conv2's inputs are the channels conv1 kept
    for conv, lif, before_conv, before_lif in ((model.conv1, model.lif1, trained.conv1,
                                                trained.lif1),
                                               (model.conv2, model.lif2, trained.conv2,
                                                trained.lif2)):
        before = before_conv.weight if kept_inputs is None else before_conv.weight[:, kept_inputs]
        kept = _rows_of(before.flatten(1), conv.weight.flatten(1))  # the channels it kept
        kept_inputs = kept
        assert lif.beta.shape == lif.threshold.shape == (conv.out_channels, 1, 1)
        assert torch.equal(lif.beta, before_lif.beta[kept])  # each channel keeps its own
        assert torch.equal(lif.threshold, before_lif.threshold[kept])
    assert pruned.values["params"] < original.values["params"]
    assert pruned.values["synops"] < original.values["synops"]
    _same_outputs(sconce.load(tmp_path, model=SpikingConvNet()), model, data)


class RecurrentSpikingNet(nn.Module):
    """Every recurrent style snnTorch has: a convolutional all-to-all RLeaky, a one-to-one
    RLeaky with a learnable per-channel ``V``, a linear all-to-all RSynaptic."""

    def __init__(self) -> None:
        super().__init__()
        grad = snn.surrogate.fast_sigmoid(slope=25)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.lif1 = snn.RLeaky(beta=torch.full((8, 1, 1), 0.7), conv2d_channels=8,
                               kernel_size=3, spike_grad=grad, init_hidden=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.lif2 = snn.RLeaky(beta=0.8, V=torch.rand(16, 1, 1), all_to_all=False,
                               learn_recurrent=True, spike_grad=grad, init_hidden=True)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 2 * 2, 12)
        self.lif3 = snn.RSynaptic(alpha=0.9, beta=torch.full((12,), 0.8), linear_features=12,
                                  spike_grad=grad, init_hidden=True)
        self.fc2 = nn.Linear(12, 4)
        self.lif4 = snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True, output=True)

    def forward(self, x: torch.Tensor):
        x = self.pool(self.lif1(self.conv1(x)))
        x = self.lif2(self.pool(self.conv2(x)))
        return self.lif4(self.fc2(self.lif3(self.fc1(self.flatten(x)))))


def _silence(model: RecurrentSpikingNet, dead: dict[str, list[int]]) -> None:
    """Zero every weight into and out of the ``dead`` channels: they never spike, so
    removing them must leave the network's output exactly as it was."""
    with torch.no_grad():
        for producer, neuron, consumer, per_unit in (("conv1", "lif1", "conv2", 1),
                                                     ("conv2", "lif2", "fc1", 4),
                                                     ("fc1", "lif3", "fc2", 1)):
            for c in dead[neuron]:
                getattr(model, producer).weight[c] = 0
                getattr(model, producer).bias[c] = 0
                getattr(model, consumer).weight[:, c * per_unit:(c + 1) * per_unit] = 0
                recurrent = getattr(model, neuron).recurrent
                if isinstance(recurrent, (nn.Linear, nn.Conv2d)):
                    recurrent.weight[c] = 0
                    recurrent.weight[:, c] = 0
                    recurrent.bias[c] = 0
                else:
                    getattr(model, neuron).V[c] = 0


def test_channel_pruning_of_recurrent_neurons_slices_their_recurrent_weights(data,
                                                                            tmp_path) -> None:
    torch.manual_seed(0)
    model = RecurrentSpikingNet()
    dead = {"lif1": [1, 3, 5, 7], "lif2": list(range(0, 16, 2)), "lif3": [0, 2, 4, 6, 8, 10]}
    _silence(model, dead)
    recipe = [("prune.channel", {"sparsity": 0.5, "fold_bn": False, "round_to": 1,
                                 "finetune": False})]
    result = _compress(copy.deepcopy(model), data, recipe, tmp_path, finetune_epochs=0)
    pruned = result.model
    live = {name: [c for c in range(n) if c not in dead[name]]
            for name, n in (("lif1", 8), ("lif2", 16), ("lif3", 12))}
    recurrent_conv, recurrent_linear = pruned.lif1.recurrent, pruned.lif3.recurrent
    assert (recurrent_conv.in_channels, recurrent_conv.out_channels) == (4, 4)
    assert (recurrent_linear.in_features, recurrent_linear.out_features) == (6, 6)
    assert torch.equal(recurrent_conv.weight,
                       model.lif1.recurrent.weight[live["lif1"]][:, live["lif1"]])
    assert torch.equal(recurrent_linear.weight,
                       model.lif3.recurrent.weight[live["lif3"]][:, live["lif3"]])
    assert torch.equal(pruned.lif1.beta, model.lif1.beta[live["lif1"]])
    assert torch.equal(pruned.lif3.beta, model.lif3.beta[live["lif3"]])
    # the one-to-one V: the neuron and its recurrent module still hold one tensor
    assert pruned.lif2.recurrent.V is pruned.lif2.V
    assert torch.equal(pruned.lif2.V, model.lif2.V[live["lif2"]])
    x = next(iter(data.test))[0]
    adapter = SpikingAdapter(num_steps=STEPS)
    before, after = adapter.forward(model, x), adapter.forward(pruned, x)
    assert after.spikes.sum() > 0  # the live channels do spike
    torch.testing.assert_close(after.spikes, before.spikes, rtol=0, atol=0)
    # sums over fewer terms round differently: equal to float32 precision
    torch.testing.assert_close(after.membrane, before.membrane, rtol=1e-5, atol=1e-6)
    _same_outputs(sconce.load(tmp_path, model=RecurrentSpikingNet()), pruned, data)


def _rows_of(full: torch.Tensor, part: torch.Tensor) -> list[int]:
    """For each row of ``part``, the index of the equal row of ``full``."""
    return [next(i for i in range(full.shape[0]) if torch.equal(full[i], row)) for row in part]


def test_weight_only_int8_of_sconce_quant_on_an_snn(trained, data, tmp_path) -> None:
    pytest.importorskip("sconce_quant")
    result = _compress(copy.deepcopy(trained), data,
                       [("quant.weight_only", {"bits": 8, "method": "rtn"})], tmp_path)
    original, quantized = result.report.stages
    assert type(result.model.fc).__name__ == "WeightOnlyLinear"
    assert quantized.values["size"] < original.values["size"]
    assert quantized.values["spike_rate"] is not None  # still a spiking network
    assert quantized.values["accuracy"] >= original.values["accuracy"] - 2.0
    _same_outputs(sconce.load(tmp_path, model=SpikingConvNet()), result.model, data)


def test_prune_int8_and_state_quantization_in_one_recipe(trained, data, tmp_path) -> None:
    recipe = [("prune.magnitude", {"sparsity": 0.5}), "snn.int8_weights",
              ("snn.state_quant", {"bits": 8})]
    result = _compress(copy.deepcopy(trained), data, recipe, tmp_path, finetune_epochs=0.25)
    original, pruned, int8, states = result.report.stages
    assert pruned.values["sparsity"] > 20.0 and int8.values["sparsity"] > 20.0
    assert int8.values["size"] < original.values["size"] / 3
    assert states.values["accuracy"] >= original.values["accuracy"] - 5.0
    _same_outputs(sconce.load(tmp_path, model=SpikingConvNet()), result.model, data)


def test_the_original_api_with_snn_true(trained, data, tmp_path) -> None:
    from sconce import sconce as legacy

    sconces = legacy()
    sconces.out_dir = str(tmp_path)  # the original API saves under out_dir/experiment_name
    sconces.model = copy.deepcopy(trained)
    sconces.dataloader = {"train": data.train, "test": data.test}
    sconces.snn, sconces.num_steps = True, STEPS
    sconces.epochs, sconces.num_finetune_epochs = 0, 0.25
    sconces.prune_mode, sconces.device, sconces.progress = "magnitude", "cpu", False
    result = sconces.compress()
    assert [s.technique for s in result.report.stages] == [None, "prune.magnitude",
                                                           "snn.int8_weights"]
    assert result.report.value("Quantized", "spike_rate") is not None
    assert (tmp_path / "sconce" / "report.json").is_file()
