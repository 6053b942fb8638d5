"""Sparse layers: every format computes what the dense layer computes (relative error <= 1e-4)
for Linear, Conv1d and Conv2d, unstructured and block-sparse; the state dict holds only the
compressed weight and loads back bit-exactly."""

from __future__ import annotations

import io

import pytest
import torch
from sparse_helpers import blocky, unstructured
from torch import nn

from sconce_sparse.convert import build_layer, layer_record
from sconce_sparse.engine import relative_error
from sconce_sparse.formats import WeightInfo, get_format
from sconce_sparse.layers import SparseConv, SparseEmbedding, SparseLinear

CPU_FORMATS = ["dense", "csr", "bsr", "numba_csr", "numba_bsr"]
TOLERANCE = 1e-4


def _pattern(weight: torch.Tensor, pattern: str) -> torch.Tensor:
    if pattern == "unstructured":
        return unstructured(weight, 0.9)
    return blocky(weight, (4, 4) if pattern == "4x4" else (1, 8), 0.8)


def _runs(layer: SparseLinear | SparseConv, name: str) -> bool:
    info = WeightInfo.of(layer.dense_weight())
    return get_format(name).unavailable(info) is None


@pytest.mark.parametrize("pattern", ["unstructured", "4x4", "1x8"])
@pytest.mark.parametrize("name", CPU_FORMATS)
def test_linear_formats_match_dense(name: str, pattern: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(_pattern(linear.weight, pattern))
    layer = SparseLinear.from_linear(linear, plan=((None, name),))
    expected_block = {"unstructured": None, "4x4": (4, 4), "1x8": (1, 8)}[pattern]
    if name in ("bsr", "numba_bsr") and expected_block is not None:
        assert _runs(layer, name) == (name == "numba_bsr" or pattern == "4x4")
    for shape in [(1, 64), (7, 64), (2, 5, 64), (40, 64), (3, 16, 64)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            assert relative_error(layer(x), linear(x)) <= TOLERANCE, shape


CONVS = {
    "conv2d": lambda: nn.Conv2d(8, 16, 3, padding=1),
    "conv2d-strided": lambda: nn.Conv2d(8, 16, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2)),
    "conv2d-1x1": lambda: nn.Conv2d(16, 32, 1, bias=False),
    "conv1d": lambda: nn.Conv1d(8, 16, 5, padding=4, dilation=2),
}


@pytest.mark.parametrize("conv", sorted(CONVS))
@pytest.mark.parametrize("name", ["dense", "csr", "numba_csr", "numba_direct", "numba_bsr"])
def test_conv_formats_match_dense(conv: str, name: str) -> None:
    torch.manual_seed(0)
    module = CONVS[conv]()
    with torch.no_grad():
        sparse = blocky(module.weight, (4, 8), 0.7) if name == "numba_bsr" else \
            unstructured(module.weight, 0.85)
        module.weight.copy_(sparse)
    layer = SparseConv.from_conv(module, plan=((None, name),))
    x = torch.randn(3, 8 if conv != "conv2d-1x1" else 16, 13, 11) if conv != "conv1d" \
        else torch.randn(3, 8, 21)
    with torch.inference_mode():
        assert relative_error(layer(x), module(x)) <= TOLERANCE
        assert relative_error(layer(x[:1]), module(x[:1])) <= TOLERANCE


@pytest.mark.gpu
def test_two_four_runs_semi_structured_on_cuda() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 128).cuda()
    with torch.no_grad():
        groups = linear.weight.reshape(128, -1, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(2, groups.abs().topk(2, dim=2).indices, True)
        linear.weight.mul_(keep.reshape(128, 128))
    layer = SparseLinear.from_linear(linear, plan=((None, "semi24"),))
    assert get_format("semi24").unavailable(WeightInfo.of(linear.weight)) is None
    x = torch.randn(64, 128, device="cuda")
    with torch.inference_mode():
        assert relative_error(layer(x), linear(x)) <= TOLERANCE


def test_a_plan_switches_formats_by_rows() -> None:
    linear = nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight.copy_(unstructured(linear.weight, 0.9))
    layer = SparseLinear.from_linear(linear, plan=((4, "numba_csr"), (None, "csr")))
    with torch.inference_mode():
        layer(torch.randn(2, 32))
        assert set(layer._kernels) == {"numba_csr"}
        layer(torch.randn(9, 32))
    assert set(layer._kernels) == {"numba_csr", "csr"}


def _reloaded(layer: torch.nn.Module) -> torch.nn.Module:
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    fresh = build_layer(layer_record(layer))  # type: ignore[arg-type]
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    return fresh


@pytest.mark.parametrize("sparsity", [0.5, 0.97])
def test_state_dict_is_compressed_and_loads_back_bit_exactly(sparsity: float) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(unstructured(conv.weight, sparsity))
    layer = SparseConv.from_conv(conv, plan=((None, "numba_direct"),))
    assert all(key == "bias" or key.startswith("weight_") for key in layer.state_dict())
    assert layer.encoding == ("bitmask" if sparsity == 0.5 else "relative")
    again = _reloaded(layer)
    assert again.encoding == layer.encoding
    assert torch.equal(again.dense_weight(), conv.weight)
    x = torch.randn(2, 8, 9, 9)
    with torch.inference_mode():
        assert torch.equal(again(x), layer(x))


def test_embedding_is_stored_compressed_and_looks_up_exactly() -> None:
    table = nn.Embedding(100, 16, padding_idx=0)
    with torch.no_grad():
        table.weight.copy_(unstructured(table.weight, 0.9))
    layer = SparseEmbedding.from_embedding(table)
    ids = torch.randint(0, 100, (4, 7))
    assert torch.equal(layer(ids), table(ids))
    assert torch.equal(_reloaded(layer)(ids), table(ids))


def test_moving_or_copying_a_layer_rebuilds_its_kernels() -> None:
    import copy

    linear = nn.Linear(16, 8)
    layer = SparseLinear.from_linear(linear, plan=((None, "numba_csr"),))
    layer(torch.randn(3, 16))
    assert layer._kernels
    assert copy.deepcopy(layer)._kernels == {}
    layer.to(torch.float32)
    assert layer._kernels == {}


def test_inputs_that_need_gradients_run_dense_after_inference_use() -> None:
    linear = nn.Linear(32, 8)
    with torch.no_grad():
        linear.weight.copy_(unstructured(linear.weight, 0.9))
    layer = SparseLinear.from_linear(linear, plan=((None, "numba_csr"),))
    with torch.inference_mode():
        layer(torch.randn(2, 32))  # kernels built here must also serve autograd later
    x = torch.randn(4, 32, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, linear.weight.detach().sum(0).expand(4, 32), atol=1e-6)
