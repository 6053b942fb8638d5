"""Exactness: channels planted with all-zero weights (and zero BatchNorm affine) are the ones
removed, and the pruned model computes exactly what the original computed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sconce_prune.channel import fold_batchnorms, prune_channels


def _zero_out(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0
        bn.weight[channels] = 0
        bn.bias[channels] = 0


def _randomise_statistics(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.add_(torch.randn(module.num_features, generator=generator) * 0.1)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), \
            nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), \
            nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.down, self.down_bn = nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32)
        self.last = Block(32)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        x = self.last(self.down_bn(self.down(x)))
        return self.fc(x.mean((2, 3)))


def _plant_chain(model: Chain) -> dict[str, list[int]]:
    planted = {"conv1": [0, 3, 4, 7, 8, 10, 13, 15],
               "conv2": list(range(1, 32, 2)),
               "conv3": [2, 3, 5, 6, 9, 11, 12, 14]}
    _zero_out(model.conv1, model.bn1, planted["conv1"])
    _zero_out(model.conv2, model.bn2, planted["conv2"])
    _zero_out(model.conv3, model.bn3, planted["conv3"])
    return planted


def _plant_residual(model: Residual) -> None:
    stream = [1, 2, 5, 6, 9, 10, 13, 14]
    _zero_out(model.stem, model.bn, stream)
    for block in model.blocks:
        _zero_out(block.conv1, block.bn1, [0, 2, 4, 6, 8, 10, 12, 14])
        _zero_out(block.conv2, block.bn2, stream)
    wide = list(range(0, 32, 2))
    _zero_out(model.down, model.down_bn, wide)
    _zero_out(model.last.conv1, model.last.bn1, list(range(16, 32)))
    _zero_out(model.last.conv2, model.last.bn2, wide)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_planted_channels_are_removed_exactly_on_a_chain(importance: str) -> None:
    torch.manual_seed(0)
    model = Chain()
    _randomise_statistics(model)
    planted = _plant_chain(model)
    model.eval()
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    kept = {name: [c for c in range(getattr(model, name).out_channels) if c not in chans]
            for name, chans in planted.items()}
    originals = {name: getattr(model, name).weight.detach().clone() for name in planted}
    prune_channels(model, x[:1], sparsity=0.5, importance=importance)
    for name, channels in kept.items():
        assert getattr(model, name).out_channels == len(channels)
    assert torch.equal(model.conv1.weight, originals["conv1"][kept["conv1"]])
    assert torch.equal(model.conv2.weight,
                       originals["conv2"][kept["conv2"]][:, kept["conv1"]])
    assert torch.equal(model.conv3.weight,
                       originals["conv3"][kept["conv3"]][:, kept["conv2"]])
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_planted_channels_are_removed_exactly_on_a_residual_network() -> None:
    torch.manual_seed(0)
    model = Residual()
    _randomise_statistics(model)
    _plant_residual(model)
    model.eval()
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    report = prune_channels(model, x[:1], sparsity=0.5, importance="l1")
    assert model.stem.out_channels == 8 and model.blocks[0].conv2.out_channels == 8
    assert model.down.out_channels == 16 and model.last.conv1.out_channels == 16
    assert report.removed == 8 + 8 + 8 + 16 + 16
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_batchnorm_folding_is_exact_after_pruning() -> None:
    torch.manual_seed(0)
    model = Residual()
    _randomise_statistics(model)
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    prune_channels(model, x[:1], sparsity=0.5)
    with torch.no_grad():
        expected = model(x)
    folded = fold_batchnorms(model, x[:1])
    assert len(folded) == 8 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_folding_skips_batchnorms_that_do_not_follow_a_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    reference = copy.deepcopy(model)
    assert fold_batchnorms(model, torch.randn(1, 3, 8, 8)) == []
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), reference(x))


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(x).view(b, t, self.heads, -1).transpose(1, 2)
        v = self.v(x).view(b, t, self.heads, -1).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, -1))


def test_planted_heads_are_removed_exactly() -> None:
    torch.manual_seed(0)
    model = Attention().eval()
    with torch.no_grad():
        for layer in (model.q, model.k, model.v):
            for head in (1, 3):
                layer.weight[head * 8:(head + 1) * 8] = 0
                layer.bias[head * 8:(head + 1) * 8] = 0
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        expected = model(x)
    prune_channels(model, x[:1], sparsity=0.5, attention="heads")
    assert model.heads == 2 and model.q.out_features == 16 and model.proj.in_features == 16
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        left, right = F.relu(self.grouped(y)).chunk(2, dim=1)
        return self.out(torch.cat([right, left], dim=1)).mean((2, 3))


def test_planted_channels_are_removed_exactly_through_concat_chunk_and_groups() -> None:
    torch.manual_seed(0)
    model = Branches().eval()
    with torch.no_grad():
        model.a.weight[[0, 2, 4, 6]] = 0
        model.a.bias[[0, 2, 4, 6]] = 0
        model.b.weight[[0, 2, 4, 6]] = 0  # the grouped conv reads a and b as its two groups,
        model.b.bias[[0, 2, 4, 6]] = 0  # which lose the same local channels
        for local in (0, 1, 2, 3):  # grouped conv: the same local channels in both groups
            model.grouped.weight[[local, local + 8]] = 0
            model.grouped.bias[[local, local + 8]] = 0
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    prune_channels(model, x[:1], sparsity=0.5, importance="l1")
    assert (model.a.out_channels, model.b.out_channels, model.grouped.out_channels) == (4, 4, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)
