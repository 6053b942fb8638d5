"""Weight sharing: extracted members match the supernet exactly; gradients reach it."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import sconce
from sconce_nas import Supernet, declare_family
from sconce_nas.supernet import shared_view


def _trained_like(supernet: Supernet) -> Supernet:
    """Random weights and BatchNorm statistics, so a wrong slice cannot go unnoticed."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in supernet.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(values + 0.5 if "running_var" in name else values - 0.5)
    return supernet


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_extracted_member_matches_the_supernet_exactly(space, mode):
    supernet = _trained_like(Supernet(space))
    rng = random.Random(0)
    x = torch.randn(4, 1, 8, 8)
    for choice in [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(6))]:
        member = supernet.extract(choice)
        supernet.train(mode == "train")
        member.train(mode == "train")
        with torch.no_grad():
            assert torch.equal(supernet.forward_subnet(choice, x), member(x)), choice


def test_extracted_member_owns_its_weights(space):
    supernet = Supernet(space)
    member = supernet.extract(space.smallest())
    before = member.state_dict()["stem.0.weight"].clone()
    with torch.no_grad():
        for p in supernet.parameters():
            p.add_(1.0)
    assert torch.equal(member.state_dict()["stem.0.weight"], before)


def test_the_largest_member_is_the_supernet(space):
    supernet = _trained_like(Supernet(space)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(supernet(x), supernet.extract(space.largest())(x))


def test_gradients_of_a_member_reach_only_its_slice_of_the_supernet(space):
    supernet = Supernet(space).train()
    choice = space.smallest()
    supernet.forward_subnet(choice, torch.randn(4, 1, 8, 8)).sum().backward()
    stem = supernet.net.stem[0].weight  # 16 output channels in the supernet, all used
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    project = supernet.net.stages[1][0].project[0].weight  # (16 out, hidden in) at width 1.0
    width = supernet.extract(choice).stages[1][0].project[0].weight.shape[0]
    assert width < project.shape[0]
    assert project.grad[width:].abs().sum() == 0
    assert project.grad[:width].abs().sum() > 0
    second_block = supernet.net.stages[1][1].expand[0].weight
    assert second_block.grad is None or second_block.grad.abs().sum() == 0  # depth 1


def test_shared_view_takes_leading_channels_and_the_kernel_centre():
    full = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    view = shared_view(full, (1, 2, 3, 3))
    assert torch.equal(view, full[:1, :2, 1:4, 1:4])
    assert view.data_ptr() == full[:1, :2, 1:4, 1:4].data_ptr()  # a view, not a copy


def test_a_family_whose_options_are_not_ordered_is_rejected():
    space = declare_family("test-unordered", {"width": (8, 4)},
                           lambda choice: nn.Linear(3, choice["width"]))
    with pytest.raises(sconce.ModelError, match="smallest to largest"):
        Supernet(space)


def test_a_member_with_a_tensor_the_largest_lacks_is_rejected():
    def build(choice):
        layers = [nn.Linear(3, 3)]
        if choice["extra"] == 1:
            layers.append(nn.Linear(3, 3))  # only in the "smallest" member
        return nn.Sequential(*layers)

    space = declare_family("test-extra-layer", {"extra": (1, 0)}, build)
    with pytest.raises(sconce.ModelError, match="lacks"):
        Supernet(space)
