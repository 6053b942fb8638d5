"""Sibling weight-only layers (one input, one ``MatMulNBits`` call): found by running the
model, exact against the layers run one by one, recorded and restored, kept by copies,
refreshed when a member's weights change, never serving a stale output."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce_quant.lowbit import nbits_unavailable
from sconce_quant.modules import WeightOnlyLinear
from sconce_quant.qparams import rtn_group_codes
from sconce_quant.siblings import SiblingGroup, find_siblings

pytestmark = pytest.mark.skipif(nbits_unavailable() is not None,
                                reason=f"MatMulNBits unavailable: {nbits_unavailable()}")


class GatedBlock(nn.Module):
    """Attention-style projections (q, k, v read one input) and a gated MLP (gate, up)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.o = nn.Linear(width, width)
        self.gate = nn.Linear(width, 2 * width, bias=False)
        self.up = nn.Linear(width, 2 * width, bias=False)
        self.down = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(h), self.k(h), self.v(h)
        h = h + self.o(torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v)
        return h + self.down(F.silu(self.gate(h)) * self.up(h))


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(GatedBlock(), GatedBlock())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=1))


def _data() -> sconce.Data:
    x = torch.randn(32, 6, 64, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8)
    return sconce.Data(train=loader, test=loader, num_classes=10)


def _quantize(model: nn.Module, out: Path | None = None, **config: object
              ) -> sconce.CompressResult:
    return sconce.compress(model, _data(), recipe=[("quant.weight_only", {
        "method": "rtn", "group_size": 32, "kernel": "onnxruntime", **config})],
        finetune_epochs=0, out=out, metrics=["size"], progress=False)


def test_layers_reading_one_input_are_grouped_and_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    fused = _quantize(copy.deepcopy(model), tmp_path)
    alone = _quantize(copy.deepcopy(model), siblings=False)
    saved = json.loads((tmp_path / "model.json").read_text())["stages"][-1]["record"]
    groups = [[n.split(".")[-1] for n in group["layers"]] for group in saved["siblings"]]
    assert groups == [["q", "k", "v"], ["gate", "up"]] * 2
    assert "4 groups of 2/3 layers" in fused.report.stages[-1].notes["weight-only siblings"]
    x = torch.randn(3, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused.model(x), alone.model(x), rtol=1e-6, atol=1e-6)
    loaded = sconce.load(tmp_path, model=Stack())
    block = loaded.blocks[0]
    assert block.q.siblings is not None and block.q.siblings[0] is block.v.siblings[0]
    assert block.o.siblings is None and block.down.siblings is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fused.model(x), rtol=0, atol=0)


def test_a_group_never_serves_a_stale_output() -> None:
    def layer(rows: int, seed: int) -> WeightOnlyLinear:
        weight = torch.randn(rows, 32, generator=torch.Generator().manual_seed(seed))
        return WeightOnlyLinear.from_codes(rtn_group_codes(weight, 4, 16, symmetric=False),
                                           torch.randn(rows), kernel="onnxruntime")

    a, b = layer(8, 0), layer(5, 1)
    reference = copy.deepcopy(a), copy.deepcopy(b)
    SiblingGroup([a, b])
    x = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), reference[1](x))  # called out of order
        x.mul_(2)  # changed in place: its version moves on
        torch.testing.assert_close(a(x), reference[0](x))
        torch.testing.assert_close(b(x), reference[1](x))
        y = torch.randn(2, 32)  # another input, one member only
        torch.testing.assert_close(a(y), reference[0](y))
        # new weights loaded into a member: the group packs them again
        other = layer(8, 7)
        a.load_state_dict(other.state_dict())
        torch.testing.assert_close(a(x), other(x))
        # a copy keeps its own group, and runs on its own kernel
        twin_a = copy.deepcopy(a)
        assert twin_a.siblings is not None and twin_a.siblings[0] is not a.siblings[0]
        torch.testing.assert_close(twin_a(x), a(x))


def test_find_siblings_groups_only_one_format_and_each_layer_once() -> None:
    def layer(bits: int) -> WeightOnlyLinear:
        return WeightOnlyLinear(32, 4, bits=bits, group_size=16)

    layers = nn.ModuleDict({"a": layer(4), "b": layer(4), "c": layer(8), "d": layer(4)})

    def run() -> None:
        x, y = torch.randn(1, 32), torch.randn(1, 32)
        layers["a"](x), layers["b"](x), layers["c"](x)  # c: another bit width
        layers["a"](y), layers["d"](y)  # a already grouped with b
    assert find_siblings(layers, run, list(layers.values())) == [["a", "b"]]
    with pytest.raises(ValueError, match="one input size, bit width"):
        SiblingGroup([layers["a"], layers["c"]])


def test_a_group_holds_its_codes_once_in_the_members_own_buffers(tmp_path: Path) -> None:
    def layer(rows: int, seed: int) -> WeightOnlyLinear:
        weight = torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed))
        return WeightOnlyLinear.from_codes(rtn_group_codes(weight, 4, 32, symmetric=False),
                                           None, kernel="onnxruntime")

    block = nn.ModuleDict({"q": layer(8, 0), "k": layer(4, 1), "v": layer(4, 2)})
    reference = {name: copy.deepcopy(member) for name, member in block.items()}
    group = SiblingGroup(list(block.values()))
    x = torch.randn(2, 64)
    with torch.no_grad():
        block["q"](x)  # builds the kernel: the members' codes become views of one tensor
    stacked = group.shared_codes()
    starts = [block[n].qweight.data_ptr() - stacked.data_ptr() for n in ("q", "k", "v")]
    assert starts == [0, 8 * 32, 12 * 32]  # rows of 32 bytes, q's 8 rows then k's 4
    weight, _ = group.nbits_source()
    assert weight.packed.data_ptr() == stacked.data_ptr()  # the kernel reads them in place
    for name, member in block.items():
        assert torch.equal(member.qweight, reference[name].qweight)
    # saved and loaded with assign=True (as a meta-device restore does): still shared
    torch.save(block.state_dict(), tmp_path / "block.pt")
    loaded = torch.load(tmp_path / "block.pt", weights_only=True)
    block.load_state_dict(loaded, assign=True)
    assert block["k"].qweight.data_ptr() == block["q"].qweight.data_ptr() + 8 * 32
    before = block["v"].qweight.data_ptr()
    with torch.no_grad():
        for name, member in block.items():
            torch.testing.assert_close(member(x), reference[name](x))
    assert block["v"].qweight.data_ptr() == before  # nothing was stacked again
    twin = copy.deepcopy(block)  # a copy shares its own storage the same way
    assert twin["k"].qweight.data_ptr() == twin["q"].qweight.data_ptr() + 8 * 32


def test_a_group_lets_its_outputs_go_once_every_member_took_its_own() -> None:
    def layer(rows: int, seed: int) -> WeightOnlyLinear:
        weight = torch.randn(rows, 32, generator=torch.Generator().manual_seed(seed))
        return WeightOnlyLinear.from_codes(rtn_group_codes(weight, 4, 16, symmetric=False),
                                           None, kernel="onnxruntime")

    a, b = layer(8, 0), layer(4, 1)
    group = SiblingGroup([a, b])
    x = torch.randn(256, 32)  # a large batch: its outputs should not outlive the block
    with torch.no_grad():
        first = a(x)
        assert group._outputs  # b's output waits for it
        torch.testing.assert_close(a(x), first)  # asked twice: still served
        b(x)
        assert group._outputs == ()  # every member took its own: nothing held
        torch.testing.assert_close(b(x), group.output(1, x))  # asked again: computed again
