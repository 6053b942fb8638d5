"""The graph-pattern zoo: every pattern prunes, runs, keeps its output shape, loses
parameters, and reloads from the architecture record with identical outputs."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sconce_prune.channel import prune_channels
from sconce_prune.channel.record import changes, replay, snapshot


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(3, 16, 3), nn.BatchNorm1d(16), nn.ReLU(),
                                  nn.Conv1d(16, 16, 3, padding=1), nn.InstanceNorm1d(16, affine=True),
                                  nn.ReLU())
        self.fc = nn.Linear(16 * 14, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 16, 3, padding=1)
        self.bn = nn.BatchNorm3d(16)
        self.conv2 = nn.Conv3d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.bn(self.conv1(x))))
        return self.head(y.mean(dim=(2, 3, 4)))


class TransposeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.up_grouped = nn.ConvTranspose2d(16, 16, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.bn(self.up_grouped(self.up(F.relu(self.down(x)))))))


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 32)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.multiplier = nn.Conv2d(32, 64, 3, padding=1, groups=32)
        self.bn = nn.BatchNorm2d(64)
        self.head = nn.Conv2d(64, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn(self.grouped(F.relu(self.stem(x)))))
        x = self.bn(self.multiplier(F.relu(self.depthwise(x))))
        return self.head(x).mean(dim=(2, 3))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.bn = nn.BatchNorm1d(32)
        self.act = nn.PReLU(32)
        self.fc2 = nn.Linear(32, 24)
        self.act2 = nn.PReLU()
        self.fc3 = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act(self.bn(self.fc1(x))))))


class TextNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 48)
        self.head = nn.Linear(48, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.norm(self.embed(tokens)))
        return self.head(F.gelu(x).mean(dim=1))


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.a(x))
        x = F.relu(self.b(x) + x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConcatNet(nn.Module):
    """YOLO-style: split, a bottleneck on one half, concat of all pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.c = 16
        self.cv1 = nn.Conv2d(3, 2 * self.c, 1)
        self.m = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU())
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.cv2 = nn.Conv2d(3 * self.c + 8, 16, 1)
        self.chunked = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), 1)
        y = self.cv2(torch.cat([a, b, self.m(b), self.left(x)], dim=1))
        p, q = y.chunk(2, dim=1)
        z = self.chunked(torch.cat((p * torch.sigmoid(q), q), 1))
        return self.fc(z.view(z.size(0), -1))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.reduce = nn.Conv2d(16, 8, 1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        scale = F.hardsigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x * scale, 1), 1))


class HandAttention(nn.Module):
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
        attn = (q @ k.transpose(-2, -1) * 0.25).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, -1))


class QKVAttention(nn.Module):
    """A fused qkv projection, unbind, and scaled_dot_product_attention."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))


class TokenNet(nn.Module):
    def __init__(self, attention: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.norm = nn.LayerNorm(32)
        self.attn = attention()
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(self.norm(x))
        x = x + self.mlp(x)
        return self.head(x[:, 0])


class MHANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.pos = nn.Parameter(torch.randn(1, 6, 32))
        self.norm = nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        tokens = torch.cat((self.cls.expand(x.shape[0], -1, -1), tokens), dim=1) + self.pos
        h = self.norm(tokens)
        tokens = tokens + self.attn(h, h, h, need_weights=False)[0]
        return self.head(tokens[:, 0])


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.depth = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.fuse = nn.Conv2d(32, 16, 1)
        self.cls = nn.Linear(16, 4)
        self.seg = nn.Conv2d(16, 2, 1)

    def forward(self, image: torch.Tensor, depth: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.image(image), self.depth(depth)
        fused = F.relu(self.fuse(torch.cat([a + b, b], 1)))
        return self.cls(fused.mean((2, 3))), self.seg(fused)


ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[torch.Tensor, ...]]]] = {
    "conv1d+bn1d+instancenorm+flatten": (Conv1dNet, lambda n: (torch.randn(n, 3, 16),)),
    "conv3d+bn3d": (Conv3dNet, lambda n: (torch.randn(n, 2, 4, 6, 6),)),
    "convtranspose+grouped-transpose": (TransposeNet, lambda n: (torch.randn(n, 3, 8, 8),)),
    "grouped+groupnorm+depthwise+multiplier": (GroupedNet, lambda n: (torch.randn(n, 3, 8, 8),)),
    "linear+bn1d+prelu": (MLP, lambda n: (torch.randn(n, 10),)),
    "embedding+layernorm": (TextNet, lambda n: (torch.randint(0, 50, (n, 7)),)),
    "residual-add": (ResidualNet, lambda n: (torch.randn(n, 3, 8, 8),)),
    "split+concat+chunk+view": (ConcatNet, lambda n: (torch.randn(n, 3, 8, 8),)),
    "squeeze-excite": (SqueezeExcite, lambda n: (torch.randn(n, 3, 8, 8),)),
    "hand-written-attention": (lambda: TokenNet(HandAttention), lambda n: (torch.randn(n, 5, 6),)),
    "qkv-unbind-sdpa": (lambda: TokenNet(QKVAttention), lambda n: (torch.randn(n, 5, 6),)),
    "multihead-attention+cls+pos": (MHANet, lambda n: (torch.randn(n, 5, 6),)),
    "multi-input+multi-output": (TwoInTwoOut, lambda n: (torch.randn(n, 3, 8, 8),
                                                         torch.randn(n, 1, 8, 8))),
}


def _outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    return list(out) if isinstance(out, tuple) else [out]


def _warm_statistics(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    model.train()
    with torch.no_grad():
        model(*inputs)
    model.eval()


@pytest.mark.parametrize("attention", ["heads", "dims"])
@pytest.mark.parametrize("pattern", sorted(ZOO))
def test_pattern_prunes_runs_and_reloads(pattern: str, attention: str) -> None:
    factory, make_inputs = ZOO[pattern]
    torch.manual_seed(0)
    model = factory()
    inputs = make_inputs(4)
    _warm_statistics(model, inputs)
    shapes = [o.shape for o in _outputs(model, inputs)]
    params = _params(model)
    before = snapshot(model)
    example = tuple(t[:1] for t in inputs)
    prune_channels(model, example if len(example) > 1 else example[0], sparsity=0.5,
                   attention=attention)
    pruned = _outputs(model, inputs)
    assert [o.shape for o in pruned] == shapes
    assert _params(model) < params
    assert all(torch.isfinite(o).all() for o in pruned)

    record = json.loads(json.dumps(changes(before, model)))
    torch.manual_seed(1)
    fresh = replay(factory(), record)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    for a, b in zip(_outputs(fresh, inputs), pruned):
        assert torch.equal(a, b)


def test_attention_heads_are_counted() -> None:
    torch.manual_seed(0)
    model = TokenNet(HandAttention)
    prune_channels(model, torch.randn(1, 5, 6), sparsity=0.5, attention="heads")
    assert model.attn.heads == 2  # the attribute behind view(b, t, self.heads, -1)
    assert model.attn.q.out_features == 16

    mha = MHANet()
    prune_channels(mha, torch.randn(1, 5, 6), sparsity=0.5, attention="heads")
    assert (mha.attn.num_heads, mha.attn.head_dim, mha.attn.embed_dim) == (2, 8, 16)
    assert mha.cls.shape == (1, 1, 16) and mha.pos.shape == (1, 6, 16)

    dims = MHANet()
    prune_channels(dims, torch.randn(1, 5, 6), sparsity=0.5, attention="dims")
    assert (dims.attn.num_heads, dims.attn.head_dim) == (4, 4)


def test_grouped_layers_keep_their_group_structure() -> None:
    model = GroupedNet()
    prune_channels(model, torch.randn(1, 3, 8, 8), sparsity=0.5)
    assert model.grouped.groups == 4 and model.grouped.in_channels % 4 == 0
    assert model.gn.num_groups == 4 and model.gn.num_channels == model.grouped.out_channels
    assert model.depthwise.groups == model.depthwise.in_channels == model.depthwise.out_channels
    assert model.multiplier.out_channels == 2 * model.multiplier.in_channels
