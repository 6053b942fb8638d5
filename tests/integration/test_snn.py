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


def _channel_pruning_reads_plugin_layer_rules() -> bool:
    """Whether the installed prune.channel consults ``sconce_register_layer_rules`` (the
    sconce-prune that does exports ``register_rule`` from ``sconce_prune.channel``)."""
    import sconce_prune.channel

    return hasattr(sconce_prune.channel, "register_rule")


@pytest.mark.skipif(not _channel_pruning_reads_plugin_layer_rules(),
                    reason="this sconce-prune's prune.channel does not read the layer rules "
                           "plugins register, so it cannot trace snnTorch neurons")
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
