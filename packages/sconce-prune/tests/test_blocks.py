"""The ``block`` option of prune.magnitude and prune.gmp: masks made of whole tiles."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sconce import Context
from sconce.errors import ConfigError, TechniqueError
from sconce_prune.config import GMPConfig, MagnitudeConfig
from sconce_prune.gmp import GradualMagnitudePruning
from sconce_prune.magnitude import MagnitudePruning
from sconce_prune.masks import block_mask


def _tiles(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    rows = mask.shape[0]
    view = mask.reshape(rows, -1)
    return view.reshape(rows // block[0], block[0], -1, block[1]).permute(0, 2, 1, 3).reshape(
        rows // block[0], -1, block[0] * block[1])


def _zero_tiles_are_whole(weight: torch.Tensor, block: tuple[int, int]) -> bool:
    tiles = _tiles(weight != 0, block)
    kept = tiles.any(-1)
    # random float weights have no accidental zeros: kept tiles are full
    return bool(tiles[kept].all())


@pytest.mark.parametrize("block", [(1, 8), (4, 4), (2, 9)])
@pytest.mark.parametrize("shape", [(16, 72), (16, 8, 3, 3)])
def test_block_masks_are_exactly_tile_shaped(shape, block) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape)
    mask = block_mask(weight, int(0.75 * weight.numel()), block)
    tiles = _tiles(mask, block)
    assert bool((tiles.all(-1) | ~tiles.any(-1)).all())  # no tile is partly kept
    size = block[0] * block[1]
    assert int((~mask).sum()) == round(0.75 * weight.numel() / size) * size


def test_the_weakest_tiles_go() -> None:
    weight = torch.ones(4, 8)
    weight[:2, :4] = 0.1   # the weakest 2x4 tile
    weight[2:, 4:] = 10.0
    mask = block_mask(weight, 8, (2, 4))
    assert not mask[:2, :4].any() and mask.sum() == 24


def test_magnitude_with_blocks_prunes_whole_tiles_and_lists_misfits() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 30), nn.ReLU(),
                          nn.Conv2d(4, 8, 3), nn.Linear(30, 2))
    ctx = Context.for_inputs(torch.randn(1, 64))
    config = MagnitudeConfig.from_dict({"sparsity": 0.75, "block": [4, 4], "skip_layers": []})
    pruned = MagnitudePruning().apply(copy.deepcopy(model), config, ctx)
    for index in (0, 4):
        weight = pruned[index].weight
        assert _zero_tiles_are_whole(weight, (4, 4))
        # the count is rounded to whole tiles: at most half a tile off
        assert abs(float((weight == 0).sum()) - 0.75 * weight.numel()) <= 8
    assert torch.equal(pruned[2].weight, model[2].weight)  # 30 rows: 4x4 does not tile it
    assert ctx.stage.notes["pattern"].startswith("blocks of 4x4")
    assert "2 (30, 64)" in ctx.stage.notes["not block-pruned (the block does not divide the weight)"]


def test_gmp_keeps_whole_tiles_through_fine_tuning(trained, data) -> None:
    config = GMPConfig(sparsity=0.75, block=(1, 8), allocation="auto", pruning_steps=3,
                       sensitivity_samples=64, sensitivity_ratios=(0.5, 0.8))
    ctx = Context(data=data, finetune_epochs=1, progress=False)
    pruned = GradualMagnitudePruning().apply(copy.deepcopy(trained), config, ctx)
    for name, module in pruned.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and (module.weight == 0).any():
            assert _zero_tiles_are_whole(module.weight, (1, 8)), name
    assert ctx.stage.notes["pattern"] == "blocks of 1x8 on (out, in * kh * kw)"


@pytest.mark.parametrize("block", [[0, 4], [1, 2, 3], "4x4", [1.5, 2]])
def test_a_bad_block_is_a_config_error(block) -> None:
    with pytest.raises(ConfigError, match="block must be two positive integers"):
        GMPConfig.from_dict({"block": block})


def test_a_block_that_tiles_no_layer_is_one_line() -> None:
    ctx = Context.for_inputs(torch.randn(1, 10))
    config = MagnitudeConfig.from_dict({"block": [4, 4], "skip_layers": []})
    with pytest.raises(TechniqueError, match=r"block 4x4 tiles none of the layers to prune "
                                             r"\(Linear: \(10, 10\)\)"):
        MagnitudePruning().apply(nn.Linear(10, 10), config, ctx)
