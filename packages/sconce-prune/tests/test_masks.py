"""Masks: exact counts, global vs layer-wise ranking, N:M patterns, enforcement."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sconce.errors import TechniqueError
from sconce_prune.masks import MaskSet, global_counts, nm_mask, round_counts
from sconce_prune.targets import find_targets


def _two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))


def test_masks_hold_exactly_through_momentum_and_weight_decay() -> None:
    model = _two_layers()
    masks = MaskSet(find_targets(model))
    masks.set_counts({"0": 200, "2": 128})
    pruned = {name: ~mask.clone() for name, mask in masks.masks.items()}
    keeper = masks.keeper()
    x, y = torch.randn(32, 16), torch.randint(0, 16, (32,))
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                      weight_decay=0.1),
                      torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)):
        moved = False
        for _ in range(6):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            moved |= any(bool(model[int(n)].weight[p].abs().sum() > 0) for n, p in pruned.items())
            keeper.on_step_end(None)  # type: ignore[arg-type]
            for name, drop in pruned.items():
                assert torch.count_nonzero(model[int(name)].weight[drop]) == 0
        assert moved, "the optimizer never moved a pruned weight; the test would prove nothing"
    assert masks.zeros() >= 328


def test_masks_hold_inside_sconce_train(data) -> None:
    import sconce

    torch.manual_seed(0)
    model = sconce.models.demo_cnn(num_classes=4, in_channels=1, image_size=8)
    targets = find_targets(model)
    masks = MaskSet(targets)
    masks.set_counts({t.name: t.numel // 2 for t in targets})
    before = {t.name: masks.masks[t.name].clone() for t in targets}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    sconce.train(model, data, epochs=1, optimizer=opt, callbacks=[masks.keeper()],
                 progress=False, device="cpu")
    for t in targets:
        assert torch.count_nonzero(t.weight[~before[t.name]]) == 0
        assert torch.count_nonzero(t.weight) > 0


def test_global_and_layerwise_ranking_differ_as_planted() -> None:
    planted = _two_layers()
    with torch.no_grad():  # layer 0: large weights; layer 2: small ones, one very large
        planted[0].weight.copy_(torch.rand(16, 16) + 1.0)
        planted[2].weight.copy_(torch.rand(16, 16) * 0.1)
        planted[2].weight[0, 0] = 50.0
    global_model, layer_model = copy.deepcopy(planted), copy.deepcopy(planted)

    targets = find_targets(global_model)
    counts = global_counts(targets, 256)
    assert counts == {"0": 1, "2": 255}  # global: the small layer goes first, bar its outlier
    MaskSet(targets).set_counts(counts)
    assert global_model[2].weight[0, 0] == 50.0
    assert torch.count_nonzero(global_model[2].weight) == 1
    assert torch.count_nonzero(global_model[0].weight) == 255

    per_layer = MaskSet(find_targets(layer_model))
    per_layer.set_counts(round_counts({"0": 0.5, "2": 0.5}, per_layer.sizes))
    assert per_layer.layer_sparsity() == {"0": 0.5, "2": 0.5}  # half of each, same total
    assert per_layer.zeros() == 256
    kept_small = layer_model[2].weight[layer_model[2].weight != 0]
    assert kept_small.numel() == 128 and bool((kept_small > 0).all())


def test_layerwise_keeps_the_largest_weights_of_each_layer() -> None:
    model = _two_layers()
    masks = MaskSet(find_targets(model))
    masks.set_counts({"0": 128, "2": 64})
    for index, count in ((0, 128), (2, 64)):
        weight = model[index].weight.detach().abs().reshape(-1)
        kept = weight[weight != 0]
        assert weight.numel() - kept.numel() == count
        original_order = torch.sort(weight, descending=True).values
        assert torch.equal(torch.sort(kept, descending=True).values,
                           original_order[:kept.numel()])


def test_round_counts_hit_the_total_exactly() -> None:
    sizes = {"a": 7, "b": 13, "c": 101}
    counts = round_counts({"a": 0.33, "b": 0.71, "c": 0.9}, sizes)
    assert sum(counts.values()) == round(0.33 * 7 + 0.71 * 13 + 0.9 * 101)
    assert all(0 <= counts[k] <= sizes[k] for k in sizes)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_masks_satisfy_the_pattern_in_every_group(n: int, m: int) -> None:
    torch.manual_seed(1)
    cases = [
        (torch.randn(6, 16), 1),            # Linear (out, in)
        (torch.randn(6, 16, 3, 3), 1),      # Conv2d (out, in, kh, kw)
        (torch.randn(16, 5, 3), 0),         # ConvTranspose1d (in, out, k)
        (torch.randn(48, 16), 1),           # attention in_proj (3E, E)
    ]
    for weight, dim in cases:
        keep = nm_mask(weight, n, m, dim)
        groups = keep.movedim(dim, -1).reshape(-1, m)
        assert torch.all(groups.sum(1) == n)
        values = weight.abs().movedim(dim, -1).reshape(-1, m)
        kept_min = torch.where(groups, values, torch.inf).min(1).values
        dropped_max = torch.where(groups, -torch.inf, values).max(1).values
        assert torch.all(kept_min >= dropped_max)


def test_nm_mask_rejects_a_dimension_that_does_not_divide() -> None:
    with pytest.raises(TechniqueError, match="not a multiple of m=4"):
        nm_mask(torch.randn(4, 6), 2, 4)
