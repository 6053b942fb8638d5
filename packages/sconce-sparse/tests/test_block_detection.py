"""Block structure is detected from the weights alone, whatever made it."""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import blocky, unstructured

from sconce_sparse.blocks import block_fill, detect_block, detect_square_block
from sconce_sparse.encoding import decode_csr, encode
from sconce_sparse.formats import WeightInfo, csr_to_blocks, is_two_four


@pytest.mark.parametrize("block", [(1, 4), (1, 8), (2, 2), (4, 4), (8, 8), (4, 1), (16, 16)])
def test_the_block_a_weight_was_pruned_in_is_found(block: tuple[int, int]) -> None:
    torch.manual_seed(0)
    weight = blocky(torch.randn(64, 128), block, 0.8)
    assert detect_block(weight) == block
    expected_square = block if block[0] == block[1] else None
    assert detect_square_block(weight) == expected_square or (
        expected_square is None and detect_square_block(weight) is None)


def test_conv_weights_are_seen_as_out_by_in_times_kernel() -> None:
    weight = blocky(torch.randn(32, 8, 3, 3), (4, 8), 0.75)  # tiles over (32, 72)
    assert detect_block(weight) == (4, 8)


def test_unstructured_dense_and_empty_weights_have_no_block() -> None:
    assert detect_block(unstructured(torch.randn(64, 64), 0.9)) is None
    assert detect_block(torch.randn(64, 64)) is None
    assert detect_block(torch.zeros(64, 64)) is None
    assert block_fill(torch.ones(4, 6, dtype=torch.bool), (4, 4)) == 0.0  # does not divide


def test_tiles_are_built_without_the_dense_matrix() -> None:
    weight = blocky(torch.randn(16, 32), (2, 4), 0.5)
    parts = decode_csr("bitmask", encode(weight, "bitmask").tensors, weight.shape)
    crow, col, tiles = csr_to_blocks(parts, (2, 4))
    rebuilt = torch.zeros(16, 32)
    for block_row in range(8):
        for p in range(int(crow[block_row]), int(crow[block_row + 1])):
            c = int(col[p])
            rebuilt[block_row * 2:block_row * 2 + 2, c * 4:c * 4 + 4] = tiles[p]
    assert torch.equal(rebuilt, weight)


def test_two_four_is_recognised() -> None:
    weight = torch.randn(8, 16)
    groups = weight.reshape(8, 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.abs().topk(2, dim=2).indices, True)
    assert is_two_four(weight * keep.reshape(8, 16))
    assert WeightInfo.of(weight * keep.reshape(8, 16)).two_four
    assert not is_two_four(weight)
