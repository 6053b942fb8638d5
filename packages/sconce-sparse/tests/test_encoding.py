"""Encodings: exact round trips at every sparsity, the sizes they claim, the smaller one chosen."""

from __future__ import annotations

import pytest
import torch
from sparse_helpers import unstructured

from sconce.errors import ConfigError
from sconce_sparse.encoding import decode_csr, decode_dense, encode, encoded_nbytes


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("encoding", ["bitmask", "relative", "auto"])
def test_round_trip_is_exact_and_sizes_are_true(sparsity: float, encoding: str) -> None:
    matrix = unstructured(torch.randn(37, 1000), sparsity)
    stored = encode(matrix, encoding)
    assert torch.equal(decode_dense(stored.encoding, stored.tensors, matrix.shape), matrix)
    assert stored.nnz == int((matrix != 0).sum())
    assert stored.nbytes == encoded_nbytes(matrix != 0, 4)[stored.encoding]


def test_gaps_longer_than_a_byte_are_bridged() -> None:
    matrix = torch.zeros(3, 2000)
    matrix[0, 1999] = 1.5          # 1999 positions skipped: 7 padding entries
    matrix[2, [0, 256, 1000]] = torch.tensor([1.0, -2.0, 3.0])
    stored = encode(matrix, "relative")
    assert stored.tensors["values"].numel() > 4  # paddings were needed
    parts = decode_csr("relative", stored.tensors, matrix.shape)
    assert parts.col.tolist() == [1999, 0, 256, 1000]
    assert torch.equal(parts.to_dense(), matrix)


def test_auto_picks_the_smaller_encoding() -> None:
    for sparsity in (0.5, 0.97):
        matrix = unstructured(torch.randn(64, 512), sparsity)
        sizes = encoded_nbytes(matrix != 0, 4)
        assert encode(matrix, "auto").encoding == min(sizes, key=sizes.__getitem__)
    assert encode(unstructured(torch.randn(64, 512), 0.5)).encoding == "bitmask"
    assert encode(unstructured(torch.randn(64, 512), 0.97)).encoding == "relative"


def test_int8_codes_with_a_zero_point_per_row() -> None:
    generator = torch.Generator().manual_seed(0)
    zero_points = torch.tensor([0, 3, -2, 5])
    codes = torch.randint(-128, 128, (4, 300), generator=generator, dtype=torch.int8)
    pruned = torch.rand(4, 300, generator=generator) < 0.9
    codes = torch.where(pruned, zero_points[:, None].to(torch.int8).expand(4, 300), codes)
    for encoding in ("bitmask", "relative"):
        stored = encode(codes, encoding, zero_points)
        assert stored.tensors["values"].dtype == torch.int8
        assert torch.equal(decode_dense(encoding, stored.tensors, codes.shape, zero_points), codes)


def test_unknown_encoding_is_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown sparse encoding 'csc'"):
        encode(torch.eye(3), "csc")
