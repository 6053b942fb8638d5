"""prune.channel through the pipeline, the original API, ONNX, and its errors and options."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.errors import ConfigError, TechniqueError
from sconce_prune.channel import (
    ChannelPruneConfig,
    build_dependency_graph,
    count_macs,
    prune_channels,
)
from sconce_prune.channel.record import to_channels_last


def _loaders(shape: tuple[int, ...], classes: int = 10, count: int = 64) -> dict[str, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(count, *shape, generator=generator)
    targets = torch.randint(0, classes, (count,), generator=generator)
    dataset = TensorDataset(inputs, targets)
    return {"train": DataLoader(dataset, batch_size=16, shuffle=True),
            "test": DataLoader(dataset, batch_size=32)}


class Net(nn.Module):
    """The network of the original sconce README (convs with bias, BN after ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.bn1(F.relu(self.conv1(x))))
        x = self.pool(self.bn2(F.relu(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


FAST = {"metrics": ["params", "accuracy"], "progress": False}


def test_cwp_in_the_original_api_prunes_the_readme_net() -> None:
    from sconce import sconce as Sconce

    sconces = Sconce()
    sconces.model = Net()
    sconces.dataloader = _loaders((3, 32, 32))
    sconces.epochs = 0
    sconces.num_finetune_epochs = 1
    sconces.prune_mode = "CWP"
    sconces.quantize = False
    sconces.progress = False
    result = sconces.compress()
    pruned = result.model
    assert pruned.conv1.out_channels == 4 and pruned.conv1.bias.shape == (4,)
    assert pruned.bn1.num_features == 4  # BN after ReLU stays, pruned with its conv
    assert pruned.fc1.in_features == 8 * 6 * 6 and pruned.fc1.out_features == 16
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert result.report.stages[-1].values["params"] < result.report.stages[0].values["params"]


def test_compress_save_and_load_give_identical_outputs(tmp_path) -> None:
    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    model = sconce.models.vgg(**kwargs)
    result = sconce.compress(model, _loaders((1, 28, 28)), recipe=["prune.channel"],
                             finetune_epochs=1, **FAST)
    result.save(tmp_path, model_spec="vgg", model_kwargs=kwargs)
    record = json.loads((tmp_path / "model.json").read_text())["stages"][0]["record"]
    assert record["replaced"]  # BatchNorms were folded
    loaded = sconce.load(tmp_path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert loaded.features[0][0].out_channels == 16


def test_pruned_model_exports_to_onnx_and_runs_in_onnxruntime(tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = sconce.models.resnet(num_classes=10, image_size=32, depths=(1, 1),
                                 widths=(16, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    prune_channels(model, x[:1], sparsity=0.5, fold_bn=True)
    to_channels_last(model)  # as the technique ships it
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)


class UnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1))
        self.inner = Cumulative()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.inner(self.block(self.conv(x))).mean((2, 3)))


class Cumulative(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)


def test_an_unknown_operation_is_a_clear_error_naming_it_and_its_module() -> None:
    with pytest.raises(TechniqueError) as error:
        prune_channels(UnknownOp(), torch.randn(1, 3, 8, 8), sparsity=0.5)
    message = str(error.value)
    assert "torch.cumsum" in message and "'inner'" in message
    assert "on_unknown='freeze'" in message


def test_freezing_keeps_the_channels_an_unknown_operation_touches() -> None:
    model = UnknownOp()
    report = prune_channels(model, torch.randn(1, 3, 8, 8), sparsity=0.5, on_unknown="freeze")
    assert model.conv.out_channels == 4  # its channels only reach the known conv
    assert model.block[0].out_channels == 8  # these reach cumsum
    assert any("torch.cumsum" in reason for reason in report.frozen)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 2)
    ignored = UnknownOp()
    prune_channels(ignored, torch.randn(1, 3, 8, 8), sparsity=0.5, ignored_layers=["inner"])
    assert ignored.block[0].out_channels == 8


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), Gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


def test_an_untraceable_model_names_the_module_and_the_line() -> None:
    with pytest.raises(TechniqueError) as error:
        build_dependency_graph(DataDependent(), torch.randn(1, 3, 8, 8))
    message = str(error.value)
    assert "'body.1'" in message and "if x.sum() > 0" in message
    model = DataDependent()  # the fix the message gives: keep that module opaque
    prune_channels(model, torch.randn(1, 3, 8, 8), sparsity=0.5, ignored_layers=["body.1"])
    assert model.body[0].out_channels == 4


def test_invalid_configs_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="importance"):
        ChannelPruneConfig(importance="l3")
    with pytest.raises(ConfigError, match="sparsity"):
        ChannelPruneConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="round_to"):
        ChannelPruneConfig(round_to=0)
    with pytest.raises(ConfigError, match="ratios"):
        ChannelPruneConfig(ratios={"features.*": 1.5})
    assert ChannelPruneConfig.from_dict({"sparsity": 0.3, "ranking": "global"}).ranking == "global"


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 24, 3), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.Conv2d(24, 40, 3), nn.BatchNorm2d(40), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 3))


def test_importance_criteria_choose_what_they_should() -> None:
    x = torch.randn(1, 3, 12, 12)
    model = _chain()
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(1.0, 25.0))  # bn_scale keeps the 12 largest gammas
    prune_channels(model, x, sparsity=0.5, importance="bn_scale")
    assert torch.equal(model[1].weight.detach(), torch.arange(13.0, 25.0))

    batches = [(torch.randn(8, 3, 12, 12), torch.randint(0, 3, (8,))) for _ in range(2)]
    taylor = _chain()
    prune_channels(taylor, x, sparsity=0.5, importance="taylor", taylor_batches=batches)
    assert taylor[0].out_channels == 12
    one, two = _chain(), _chain()
    prune_channels(one, x, sparsity=0.5, importance="random", seed=1)
    prune_channels(two, x, sparsity=0.5, importance="random", seed=2)
    assert not torch.equal(one[0].weight, two[0].weight)


def test_round_to_ratios_ignored_layers_and_global_ranking() -> None:
    x = torch.randn(1, 3, 12, 12)
    rounded = _chain()
    prune_channels(rounded, x, sparsity=0.3, round_to=8)
    assert (rounded[0].out_channels, rounded[3].out_channels) == (16, 32)  # 17 -> 16, 28 -> 32
    per_layer = _chain()
    prune_channels(per_layer, x, sparsity=0.5, ratios={"3": 0.25}, ignored_layers=["0"])
    assert (per_layer[0].out_channels, per_layer[3].out_channels) == (24, 30)
    glob = _chain()
    with torch.no_grad():  # most channels of the second layer hardly matter
        glob[3].weight[:30] *= 0.01
        glob[4].weight[:30] = 0.01
    report = prune_channels(glob, x, sparsity=0.5, ranking="global", importance="l1")
    assert glob[3].out_channels <= 10 and glob[0].out_channels >= 22
    assert sum(before - after for _, before, after in report.widths) == 32
    uniform = _chain()
    prune_channels(uniform, x, sparsity=0.5)
    assert (uniform[0].out_channels, uniform[3].out_channels) == (12, 20)


def test_target_macs_and_latency_through_the_technique() -> None:
    model = sconce.models.vgg(num_classes=10, in_channels=1, image_size=28,
                              widths=(16, "M", 32, "M", 32), hidden_features=32)
    x = torch.randn(1, 1, 28, 28)
    before = count_macs(model, x)
    result = sconce.compress(copy.deepcopy(model), _loaders((1, 28, 28)),
                             recipe=[("prune.channel", {"target_macs": "2.5x", "round_to": 1})],
                             finetune_epochs=0, **FAST)
    assert count_macs(result.model, x) <= 0.4 * before
    assert count_macs(result.model, x) > 0.25 * before
    assert "ratio found for target_macs" in result.report.stages[-1].notes
    timed = sconce.compress(copy.deepcopy(model), _loaders((1, 28, 28)),
                            recipe=[("prune.channel", {"target_latency": "1.1x"})],
                            finetune_epochs=0, **FAST)
    ratio = timed.report.stages[-1].notes["ratio found for target_latency"]
    assert 0.0 < ratio <= 0.95
    # the limit it searched for, and what kind of target it was read as
    assert "(1.1x, a reduction; the original measured " in \
        timed.report.stages[-1].notes["target_latency limit"]
    assert "a reduction; the original measured" in result.report.stages[-1].notes[
        "target_macs limit"]
    with pytest.raises(ConfigError, match="not both"):
        ChannelPruneConfig(target_macs="2x", target_latency="2x")


def test_a_reduction_follows_the_originals_fastest_timing() -> None:
    """The original timed once in a slow spell (3x) would make "2x" a loose limit; it is timed
    again before each candidate, and the limit follows its fastest time."""
    from sconce.recipe import Target
    from sconce_prune.channel.pruner import search_ratio

    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    params = float(sum(p.numel() for p in net.parameters()))
    calls: list[str] = []

    def measure(model: nn.Module) -> float:  # "latency": parameters, the original slow once
        calls.append("original" if model is net else "candidate")
        value = float(sum(p.numel() for p in model.parameters()))
        return 3 * value if calls == ["original"] else value

    ratio = search_ratio(net, torch.randn(1, 8), Target.parse("2x"), measure,
                         lambda m, r: prune_channels(m, torch.randn(1, 8), sparsity=r))
    assert calls.count("original") == calls.count("candidate") + 1
    pruned = copy.deepcopy(net)
    prune_channels(pruned, torch.randn(1, 8), sparsity=ratio)
    assert sum(p.numel() for p in pruned.parameters()) <= params / 2  # not 1.5x params
    assert ratio > 0.4


def test_the_runs_target_macs_reaches_the_technique() -> None:
    """One meaning per constraint: the run's target_macs, as a stage's own, unless the stage
    sets its own."""
    model = sconce.models.vgg(num_classes=10, in_channels=1, image_size=28,
                              widths=(16, "M", 32, "M", 32), hidden_features=32)
    x = torch.randn(1, 1, 28, 28)
    before = count_macs(model, x)
    result = sconce.compress(copy.deepcopy(model), _loaders((1, 28, 28)),
                             recipe=[("prune.channel", {"round_to": 1})],
                             constraints={"target_macs": "2.5x"}, finetune_epochs=0, **FAST)
    assert 0.25 * before < count_macs(result.model, x) <= 0.4 * before
    notes = result.report.stages[-1].notes
    assert notes["target_macs"] == "2.5x (the run's constraint)"
    assert notes["constraints"] == "all met"
    own = sconce.compress(copy.deepcopy(model), _loaders((1, 28, 28)),
                          recipe=[("prune.channel", {"round_to": 1, "target_macs": "1.5x"})],
                          constraints={"target_macs": "2.5x"}, finetune_epochs=0, **FAST)
    assert count_macs(own.model, x) > 0.4 * before  # the stage's own target wins
    with pytest.raises(ConfigError, match="write a ratio like '2.5x'"):
        ChannelPruneConfig(target_macs=0.4)  # the old fraction: one unit convention now
    assert ChannelPruneConfig.from_dict({"target_macs": "300M"}).target_macs == "300M"


def test_sensitivity_allocation_chooses_per_group_ratios() -> None:
    model = sconce.models.vgg(num_classes=10, in_channels=1, image_size=28, widths=(8, "M", 16, "M"),
                              hidden_features=16)
    result = sconce.compress(model, _loaders((1, 28, 28)),
                             recipe=[("prune.channel", {"allocation": "sensitivity",
                                                        "sensitivity_samples": 32,
                                                        "round_to": 1})],
                             finetune_epochs=0, **FAST)
    notes = result.report.stages[-1].notes
    assert set(notes["per-group ratios"]) == {"features.0.0", "features.2.0", "classifier.1"}
    assert "ratio allocation" in notes and result.artifacts
    total = 8 + 16 + 16
    kept = (result.model.features[0][0].out_channels + result.model.features[2][0].out_channels
            + result.model.classifier[1].out_features)
    assert abs((total - kept) / total - 0.5) < 0.1


def test_consumer_scores_and_batchnorm_recalibration() -> None:
    from sconce_prune.channel.folding import recalibrate_batchnorms

    x = torch.randn(1, 3, 12, 12)
    model = _chain()
    with torch.no_grad():  # filters look alike; what reads them tells the channels apart
        model[0].weight.copy_(model[0].weight[:1].expand_as(model[0].weight))
        model[1].weight.fill_(1.0)
        model[3].weight[:, :12] *= 0.01
    prune_channels(model, x, sparsity=0.5, consumers=True)
    assert torch.allclose(model[3].weight.abs().mean(), model[3].weight[:, :12].abs().mean())
    assert model[3].weight.abs().mean() > 0.01  # the 12 channels read with weight kept

    before = model[4].running_mean.clone()
    model.eval()
    used = recalibrate_batchnorms(model, [torch.randn(8, 3, 12, 12) * 3 for _ in range(3)])
    assert used == 3 and not torch.equal(before, model[4].running_mean)
    assert model[4].momentum == 0.1 and not model.training


def test_finetuning_runs_at_the_scaled_learning_rate(monkeypatch, tmp_path) -> None:
    import sconce.context
    from sconce_prune.channel.technique import ChannelPruning

    seen: dict[str, float] = {}

    def fake_train(model, data, epochs, **options):  # records what the core's loop receives
        seen.update(epochs=epochs, lr=options["lr"])
        return model

    monkeypatch.setattr(sconce.context, "fit", fake_train)
    inputs, labels = torch.randn(16, 3, 12, 12), torch.randint(0, 3, (16,))
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=8)
    ctx = sconce.Context(data=sconce.Data(train=loader, test=loader), finetune_epochs=2.0,
                         finetune_lr=2e-3, work_dir=tmp_path)
    ChannelPruning().apply(_chain(), ChannelPruneConfig(finetune_lr_scale=2.5), ctx)
    assert seen == {"epochs": 2.0, "lr": pytest.approx(5e-3)}
    with pytest.raises(ConfigError, match="finetune_lr_scale"):
        ChannelPruneConfig(finetune_lr_scale=0)


def test_sensitivity_allocation_at_a_mac_target() -> None:
    model = sconce.models.vgg(num_classes=10, in_channels=1, image_size=28, widths=(8, "M", 16, "M"),
                              hidden_features=16)
    x = torch.randn(1, 1, 28, 28)
    result = sconce.compress(copy.deepcopy(model), _loaders((1, 28, 28)),
                             recipe=[("prune.channel", {"allocation": "sensitivity",
                                                        "target_macs": "2x",
                                                        "sensitivity_samples": 32,
                                                        "round_to": 1, "fold_bn": False})],
                             finetune_epochs=0, **FAST)
    assert count_macs(result.model, x) <= 0.5 * count_macs(model, x)
    assert count_macs(result.model, x) > 0.3 * count_macs(model, x)  # the smallest fraction
    assert "per-group ratios" in result.report.stages[-1].notes


def test_gradual_schedule_through_the_pipeline_saves_and_loads(tmp_path) -> None:
    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 28,
              "widths": (16, "M", 32, "M"), "hidden_features": 32}
    model = sconce.models.vgg(**kwargs)
    result = sconce.compress(model, _loaders((1, 28, 28)),
                             recipe=[("prune.channel", {"schedule": "gradual",
                                                        "gradual_end": 0.5})],
                             finetune_epochs=1, **FAST)
    assert result.model.features[0][0].out_channels == 8
    result.save(tmp_path, model_spec="vgg", model_kwargs=kwargs)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(sconce.load(tmp_path)(x), result.model(x))
    with pytest.raises(ConfigError, match="leave steps at 1"):
        ChannelPruneConfig(schedule="gradual", steps=2)
