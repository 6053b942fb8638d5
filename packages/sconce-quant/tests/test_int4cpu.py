"""ATen's int4 CPU kernel (the ``torch`` weight-only kernel): its layout round-trips exactly,
it computes the dequantized matmul, layers repack their codes in place and always save
sconce's own packing, sibling groups share one repacked tensor, and the technique runs the
layers it can on it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_siblings import Stack, _quantize
from test_weight_only import _lm_ctx
from torch import nn

import sconce
from sconce.lowbit import pack_int4
from sconce_quant.int4cpu import (
    MAX_ROWS,
    Int4CpuKernel,
    from_kernel_layout,
    int4cpu_unavailable,
    scale_and_offset,
    to_kernel_layout,
)
from sconce_quant.lowbit import nbits_unavailable
from sconce_quant.modules import WeightOnlyLinear
from sconce_quant.qparams import rtn_group_codes
from sconce_quant.siblings import SiblingGroup
from sconce_quant.weight_only import WeightOnly, WeightOnlyConfig

pytestmark = pytest.mark.skipif(int4cpu_unavailable(4, 64, 64, 64) is not None,
                                reason=f"no int4 CPU kernel: {int4cpu_unavailable(4, 64, 64, 64)}")


def _layer(rows: int, cols: int = 64, seed: int = 0, kernel: str = "torch",
           bias: bool = True) -> WeightOnlyLinear:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    return WeightOnlyLinear.from_codes(rtn_group_codes(weight, 4, 32, symmetric=False),
                                       torch.randn(rows, generator=generator) if bias else None,
                                       kernel=kernel)


@pytest.mark.parametrize("rows, cols", [(16, 64), (48, 64), (80, 96), (192, 576), (576, 1536)])
def test_the_kernel_layout_round_trips_exactly(rows: int, cols: int) -> None:
    codes = torch.randint(0, 16, (rows, cols), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(rows))
    packed = to_kernel_layout(codes)
    assert packed.shape == (rows, cols // 2) and packed.dtype == torch.uint8
    assert torch.equal(from_kernel_layout(packed, cols), codes)
    # whole chunks of rows are packed as if alone (what sibling groups rely on)
    assert torch.equal(to_kernel_layout(codes[64:]), packed[64:]) or rows <= 64


@pytest.mark.parametrize("rows", [1, 5])
def test_the_kernel_computes_the_dequantized_matmul(rows: int) -> None:
    codes = rtn_group_codes(torch.randn(96, 128) * 0.05, 4, 64, symmetric=False)
    bias = torch.randn(96)
    kernel = Int4CpuKernel(to_kernel_layout(codes.codes),
                           scale_and_offset(codes.scales, codes.zeros), 64, bias)
    x = torch.randn(rows, 128)
    reference = x @ codes.dequantize().t() + bias
    out = kernel(x)
    assert out.dtype == torch.float32 and out.shape == (rows, 96)
    # bfloat16 activations and scales: a relative error of a few 1e-3
    assert float((out - reference).norm() / reference.norm()) < 1e-2


def test_a_layer_repacks_in_place_and_saves_its_own_packing(tmp_path: Path) -> None:
    layer = _layer(64)
    portable = layer.qweight.clone()
    reference = copy.deepcopy(layer)
    reference.kernel = "dequantize"
    where = layer.qweight.data_ptr()
    x = torch.randn(3, 64)
    with torch.no_grad():
        out = layer(x)
        assert float((out - reference(x)).norm() / reference(x).norm()) < 1e-2
    assert layer.qweight.data_ptr() == where  # repacked in place: no second copy
    assert not torch.equal(layer.qweight, portable)
    assert torch.equal(layer.state_dict()["qweight"], portable)  # saved in sconce's packing
    assert torch.equal(layer.codes(), reference.codes())
    torch.testing.assert_close(layer.dequantized_weight(), reference.dequantized_weight())
    # many rows: the dequantized weight and a float matmul, exactly as `dequantize` does
    many = torch.randn(MAX_ROWS, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(many), reference(many), rtol=0, atol=0)
    # a copy runs on its own codes; a fresh layer loads the saved state
    torch.save(layer.state_dict(), tmp_path / "layer.pt")
    fresh = _layer(64, seed=9)
    fresh.load_state_dict(torch.load(tmp_path / "layer.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)
        torch.testing.assert_close(copy.deepcopy(layer)(x), out, rtol=0, atol=0)


@pytest.mark.skipif(nbits_unavailable() is not None, reason="MatMulNBits unavailable")
def test_a_layer_moved_to_another_kernel_converts_its_codes_back() -> None:
    layer = _layer(64)
    reference = copy.deepcopy(layer)
    reference.kernel = "dequantize"
    x = torch.randn(2, 64)
    with torch.no_grad():
        layer(x)  # the torch kernel's layout
        layer.kernel = "onnxruntime"
        out = layer(x)  # MatMulNBits, int8 activations
        assert float((out - reference(x)).norm() / reference(x).norm()) < 2e-2
        assert torch.equal(layer.qweight, reference.qweight)


def test_sibling_groups_run_one_repacked_tensor_and_stay_exact(tmp_path: Path) -> None:
    block = nn.ModuleDict({"q": _layer(128, seed=0), "k": _layer(64, seed=1),
                           "v": _layer(64, seed=2, bias=False)})
    alone = {name: copy.deepcopy(member) for name, member in block.items()}
    portable = {name: member.qweight.clone() for name, member in block.items()}
    group = SiblingGroup(list(block.values()))
    x = torch.randn(2, 64)
    with torch.no_grad():
        for name, member in block.items():
            torch.testing.assert_close(member(x), alone[name](x), rtol=1e-5, atol=1e-5)
    stacked = group.kernel.packed  # type: ignore[union-attr]
    assert block["k"].qweight.data_ptr() == stacked.data_ptr() + 128 * 32
    assert torch.equal(block["k"].qweight, to_kernel_layout(alone["k"].codes()))
    state = block.state_dict()
    assert all(torch.equal(state[f"{n}.qweight"], portable[n]) for n in block)
    with pytest.raises(ValueError, match="multiples of 64"):
        SiblingGroup([_layer(64), _layer(48)])


def test_the_technique_runs_what_it_can_on_the_torch_kernel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    result = _quantize(copy.deepcopy(model), tmp_path, kernel="torch")
    kernels = {name: m.kernel for name, m in result.model.named_modules()
               if isinstance(m, WeightOnlyLinear)}
    assert kernels["head"] != "torch"  # 10 outputs: not a multiple of 16
    assert {k for name, k in kernels.items() if name != "head"} == {"torch"}
    note = result.report.stages[-1].notes
    assert "torch for 14 layers" in note["weight-only kernel"]
    assert "4 groups of 2/3 layers" in note["weight-only siblings"]
    reference = _quantize(copy.deepcopy(model), kernel="dequantize").model
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        out = result.model(x)
        assert float((out - reference(x)).norm() / reference(x).norm()) < 2e-2
        loaded = sconce.load(tmp_path, model=Stack())
        assert {name: m.kernel for name, m in loaded.named_modules()
                if isinstance(m, WeightOnlyLinear)} == kernels
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)


def test_int8_layers_are_not_for_the_torch_kernel() -> None:
    model, ctx = _lm_ctx()
    config = WeightOnlyConfig(bits=8, method="rtn", group_size=32, kernel="torch")
    with pytest.raises(Exception, match="the torch kernel cannot run any layer of this model: "
                                        "it runs 4-bit codes only"):
        WeightOnly().apply(model, config, ctx)


def test_a_wrong_input_width_is_named() -> None:
    with torch.no_grad(), pytest.raises(RuntimeError, match="takes 64 input features, the "
                                                            "input has 32"):
        _layer(64)(torch.randn(1, 32))


def test_portable_packing_is_sconce_s_own() -> None:
    layer = _layer(64)
    assert torch.equal(layer.portable_qweight(), pack_int4(layer.codes()))
