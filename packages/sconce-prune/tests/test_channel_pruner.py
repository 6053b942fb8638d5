"""ChannelPruner: user layers taught with register_rule, criterion functions, iterative steps,
and layer types a plugin describes (a toy spiking neuron, so snntorch is not needed)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sconce
from sconce.errors import ConfigError, TechniqueError
from sconce_prune.channel import (
    ChannelMixingLayer,
    ChannelPruner,
    GroupView,
    build_dependency_graph,
    prune_channels,
    register_rule,
    unregister_rule,
)


# --- a layer of the user's: traced into, torch.fx would see F.linear on a parameter ---------
class LowRankLinear(nn.Module):
    """y = x @ (u @ v).T + b with its own parameter names: no torch layer inside."""

    def __init__(self, features_in: int, features_out: int, rank: int = 3) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(features_out, rank) / rank**0.5)
        self.v = nn.Parameter(torch.randn(rank, features_in) / features_in**0.5)
        self.shift = nn.Parameter(torch.randn(features_out) * 0.1)
        self.width = features_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.u @ self.v, self.shift)


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.mix = LowRankLinear(16, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.mix(F.relu(self.stem(x)))))


@pytest.fixture
def low_rank_rule():
    # u's rows and shift's entries are output channels; v's columns read the input channels
    register_rule(LowRankLinear, ChannelMixingLayer(produces={"u": 0, "shift": 0},
                                                    consumes={"v": 1}, out_count=("width",)))
    yield
    unregister_rule(LowRankLinear)


def test_an_unknown_user_layer_is_an_error_until_a_rule_is_registered(low_rank_rule) -> None:
    unregister_rule(LowRankLinear)
    with pytest.raises(TechniqueError, match="register_rule|F.linear|matmul"):
        prune_channels(UserNet(), torch.randn(1, 6), sparsity=0.5)


def test_a_user_layer_taught_with_register_rule_is_pruned_exactly(low_rank_rule) -> None:
    torch.manual_seed(0)
    model = UserNet().eval()
    dead_stem, dead_mix = [1, 4, 5, 9, 10, 12, 13, 15], list(range(0, 24, 2))
    with torch.no_grad():  # planted dead channels: removing them changes nothing
        model.stem.weight[dead_stem] = 0
        model.stem.bias[dead_stem] = 0
        model.mix.u[dead_mix] = 0
        model.mix.shift[dead_mix] = 0
    x = torch.randn(8, 6)
    with torch.no_grad():
        expected = model(x)
    u, v = model.mix.u.detach().clone(), model.mix.v.detach().clone()
    report = ChannelPruner(model, x[:1], sparsity=0.5, importance="l2").prune()
    assert dict((name, after) for name, _, after in report.widths) == {"stem": 8, "mix": 12}
    kept_stem = [c for c in range(16) if c not in dead_stem]
    kept_mix = [c for c in range(24) if c not in dead_mix]
    assert torch.equal(model.mix.u, u[kept_mix]) and torch.equal(model.mix.v, v[:, kept_stem])
    assert model.mix.shift.shape == (12,) and model.mix.width == 12
    assert model.head.in_features == 12 and model.stem.out_features == 8
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_rules_given_to_one_pruner_stay_with_it() -> None:
    model = UserNet()
    rule = ChannelMixingLayer(produces={"u": 0, "shift": 0}, consumes={"v": 1})
    ChannelPruner(model, torch.randn(1, 6), rules={LowRankLinear: rule}).prune()
    assert model.mix.u.shape[0] == 12
    with pytest.raises(TechniqueError):  # not registered globally
        build_dependency_graph(UserNet(), torch.randn(1, 6))


def test_register_rule_rejects_what_is_not_a_rule() -> None:
    with pytest.raises(ConfigError, match="nn.Module subclass"):
        register_rule(int, ChannelMixingLayer())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ChannelwiseLayer"):
        register_rule(LowRankLinear, "passthrough")  # type: ignore[arg-type]


# --- criteria ------------------------------------------------------------------------------
def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 24, 3), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.Conv2d(24, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))


def test_a_criterion_function_is_called_on_each_group_and_decides() -> None:
    seen: list[tuple[str, int, list[tuple[str, str, str]]]] = []

    def prefer_high_index(view: GroupView) -> np.ndarray:  # keeps the last channels
        seen.append((view.name, view.channels,
                     [(t.module, t.name, t.role) for t in view.tensors]))
        return np.arange(view.channels, dtype=float)

    model = _chain()
    original = model[0].weight.detach().clone()
    ChannelPruner(model, torch.randn(1, 3, 12, 12), importance=prefer_high_index).prune()
    assert [(name, count) for name, count, _ in seen] == [("0", 24), ("3", 32)]
    assert ("1", "weight", "out") in seen[0][2] and ("3", "weight", "in") in seen[0][2]
    assert torch.equal(model[0].weight, original[12:])
    with pytest.raises(ConfigError, match="one score per channel"):
        ChannelPruner(_chain(), torch.randn(1, 3, 12, 12), importance=lambda view: [1.0]).prune()


def test_group_view_gathers_every_channels_slices() -> None:
    model = _chain()
    pruner = ChannelPruner(model, torch.randn(1, 3, 12, 12))
    captured: dict[str, torch.Tensor] = {}

    def capture(view: GroupView) -> np.ndarray:
        for t in view.tensors:
            captured[f"{view.name}:{t.module}.{t.name}"] = t.per_channel()
        return np.ones(view.channels)

    pruner.importance = capture
    pruner.scores()
    assert torch.equal(captured["0:0.weight"][:, 0], model[0].weight)  # (24, 1, 3, 3, 3)
    assert torch.equal(captured["0:3.weight"][:, 0], model[3].weight.transpose(0, 1))


@pytest.mark.parametrize("importance", ["group_l2", "taylor", "group_taylor", "hessian"])
def test_every_named_criterion_removes_planted_dead_channels(importance: str) -> None:
    model = _chain()
    dead = list(range(0, 24, 2))
    with torch.no_grad():  # dead: no filter, no BN affine, not read by the next conv
        model[0].weight[dead] = 0
        model[0].bias[dead] = 0
        model[1].weight[dead] = 0
        model[1].bias[dead] = 0
        model[3].weight[:, dead] = 0
    batches = [(torch.randn(8, 3, 12, 12), torch.randint(0, 3, (8,))) for _ in range(2)]
    bias = model[0].bias.detach().clone()
    ChannelPruner(model, torch.randn(1, 3, 12, 12), importance=importance,
                  batches=batches).prune()
    assert torch.equal(model[0].bias, bias[1::2])


def test_gradient_criteria_without_batches_are_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs training batches"):
        ChannelPruner(_chain(), torch.randn(1, 3, 12, 12), importance="group_taylor").prune()
    with pytest.raises(ConfigError, match="importance must be"):
        ChannelPruner(_chain(), torch.randn(1, 3, 12, 12), importance="l3")


# --- iterative pruning ---------------------------------------------------------------------
def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("steps", [2, 3])
def test_n_steps_give_the_structure_of_one_prune_at_the_same_ratio(steps: int) -> None:
    model = sconce.models.resnet(num_classes=10, image_size=32, depths=(1, 1), widths=(24, 40))
    x = torch.randn(1, 3, 32, 32)
    once = copy.deepcopy(model)
    ChannelPruner(once, x, sparsity=0.6, round_to=4).prune()
    stepped = copy.deepcopy(model)
    pruner = ChannelPruner(stepped, x, sparsity=0.6, round_to=4, steps=steps)
    widths = [pruner.step().widths for _ in range(steps)]
    assert _shapes(stepped) == _shapes(once) != _shapes(model)
    assert all(after < before for _, before, after in widths[0])  # every step removes some
    with pytest.raises(TechniqueError, match="make a new one"):
        pruner.step()
    assert pruner.groups()[0].size == widths[-1][0][2]


# --- layer types a plugin describes: a toy leaky integrate-and-fire neuron ------------------
class ToyLeaky(nn.Module):
    """A spiking neuron: per-channel learnable decay, one shared threshold; the membrane
    state is passed explicitly (``spk, mem = lif(x, mem)``) or kept inside
    (``init_hidden=True``). Data-dependent Python inside: torch.fx could not trace it."""

    def __init__(self, channels: int, init_hidden: bool = False) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.linspace(0.5, 0.9, channels))
        self.threshold = nn.Parameter(torch.tensor([1.0]))
        self.init_hidden = init_hidden
        self.mem: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None) -> object:
        state = mem if not self.init_hidden else self.mem
        if state is None or state.shape != x.shape:
            state = torch.zeros_like(x)
        beta = self.beta.view(1, -1, *([1] * (x.dim() - 2)))
        state = beta * state + x
        spikes = (state > self.threshold).float()
        state = state - spikes * self.threshold
        if self.init_hidden:
            self.mem = state
            return spikes
        return spikes, state


class SpikingNet(nn.Module):
    def __init__(self, steps: int = 3, init_hidden: bool = False) -> None:
        super().__init__()
        self.steps = steps
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.lif1 = ToyLeaky(16, init_hidden)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.lif2 = ToyLeaky(24, init_hidden)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem1 = mem2 = None
        out = []
        for _ in range(self.steps):
            current = self.bn1(self.conv1(x))
            if self.lif1.init_hidden:
                spk1 = self.lif1(current)
                spk2 = self.lif2(self.bn2(self.conv2(spk1)))
            else:
                spk1, mem1 = self.lif1(current, mem1)
                spk2, mem2 = self.lif2(self.bn2(self.conv2(spk1)), mem2)
            out.append(self.fc(spk2.mean((2, 3))))
        return torch.stack(out).sum(0)


class ToyNeuronPlugin:
    @sconce.hookimpl
    def sconce_register_layer_rules(self, register) -> None:
        register(ToyLeaky, sconce.ChannelwiseLayer(per_channel=("beta", "threshold", "absent")))


@pytest.fixture
def toy_neurons():
    sconce.register_plugin(ToyNeuronPlugin(), name="toy-neurons")
    yield
    sconce.unregister_plugin("toy-neurons")


@pytest.mark.parametrize("init_hidden", [False, True])
def test_a_plugin_described_neuron_is_pruned_with_its_channels(toy_neurons,
                                                               init_hidden: bool) -> None:
    torch.manual_seed(0)
    model = SpikingNet(init_hidden=init_hidden).eval()
    dead = list(range(1, 16, 2))
    with torch.no_grad():
        model.conv1.weight[dead] = 0
        model.conv1.bias[dead] = 0
        model.bn1.weight[dead] = 0
        model.bn1.bias[dead] = 0
        model.conv2.weight[:, dead] = 5.0  # large, but they read channels that never spike
        dead2 = list(range(0, 24, 2))
        model.conv2.weight[dead2] = 0
        model.conv2.bias[dead2] = 0
        model.bn2.weight[dead2] = 0
        model.bn2.bias[dead2] = 0
    x = torch.randn(4, 1, 8, 8) * 3
    with torch.no_grad():
        expected = model(x)
    beta = model.lif1.beta.detach().clone()
    graph = build_dependency_graph(model, x[:1])
    assert [n.op for n in graph.graph_module.graph.nodes if "lif" in n.name][:1] == \
        ["call_module"]  # a leaf, not traced into
    report = ChannelPruner(model, x[:1], sparsity=0.5, importance="bn_scale").prune()
    assert ("conv1", 16, 8) in report.widths
    kept = [c for c in range(16) if c not in dead]
    assert torch.equal(model.lif1.beta, beta[kept]) and model.lif2.beta.shape == (12,)
    assert model.lif1.threshold.shape == (1,)  # shared by every channel: left alone
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_a_neuron_state_of_fixed_size_freezes_its_channels(toy_neurons) -> None:
    class FixedState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.lif = ToyLeaky(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spikes, _ = self.lif(self.conv(x), torch.zeros(1, 8, 6, 6))
            return self.fc(spikes.mean((2, 3)))

    model = FixedState()
    report = ChannelPruner(model, torch.randn(1, 1, 6, 6), sparsity=0.5).prune()
    assert model.conv.out_channels == 8 and any("fixed-size state" in r for r in report.frozen)


def test_names_that_match_nothing_are_errors_with_suggestions() -> None:
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(ConfigError, match=r"ratios pattern 'conv3' matches no channel group"):
        ChannelPruner(_chain(), x, ratios={"conv3": 0.2}).prune()
    with pytest.raises(ConfigError, match=r"did you mean '3'"):
        ChannelPruner(_chain(), x, ignored_layers=["3."]).prune()


# --- gradual pruning -----------------------------------------------------------------------
def test_gradual_masks_remove_channels_mid_training_exactly_and_keep_training() -> None:
    from sconce_prune.channel.gradual import GradualChannelMasks
    from sconce_prune.schedule import CubicSchedule

    torch.manual_seed(0)
    model = _chain()
    x = torch.randn(4, 3, 12, 12)
    data = [(torch.randn(8, 3, 12, 12), torch.randint(0, 3, (8,))) for _ in range(12)]
    masks = GradualChannelMasks(ChannelPruner(model, x[:1], sparsity=0.5),
                                CubicSchedule(0.0, 0.5, end=0.5, steps=3))
    seen: dict[str, object] = {}
    remove = masks.pruner.remove

    def checked_remove(plan, on_resize=None):  # the model just before and after removal
        model.eval()
        with torch.no_grad():
            before = model(x)
        dropped = [int(w) for w in (model[0].weight.flatten(1).abs().sum(1) == 0).nonzero()]
        report = remove(plan, on_resize)
        with torch.no_grad():
            seen.update(exact=torch.allclose(model(x), before, atol=1e-5), dropped=dropped)
        model.train()
        return report

    class OptimizerCheck(sconce.TrainCallback):
        def on_train_end(self, state) -> None:  # the optimizer follows the resized model
            params = [p for group in state.optimizer.param_groups for p in group["params"]]
            assert {id(p) for p in params} == {id(p) for p in model.parameters()}
            for p in params:
                assert state.optimizer.state[p]["exp_avg"].shape == p.shape

    masks.pruner.remove = checked_remove
    result = sconce.train(model, torch.utils.data.DataLoader(data, batch_size=None), 1,
                          callbacks=[masks, OptimizerCheck()], progress=False, device="cpu",
                          lr=1e-2)
    assert seen["exact"] and len(seen["dropped"]) == 12  # type: ignore[arg-type]
    assert model[0].out_channels == 12 and model[3].out_channels == 16
    assert masks.finish() is masks.report and result.steps == 12
