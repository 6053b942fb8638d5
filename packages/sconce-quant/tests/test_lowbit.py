"""Low-bit kernels for weight-only layers: the ``MatMulNBits`` packing round-trips exactly,
the kernel computes what the dequantized weight computes, the technique picks a kernel by
measurement and restores it, tied embeddings share one quantized matrix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_weight_only import TinyLM, _lm_ctx
from torch import nn

import sconce
from sconce.errors import ConfigError
from sconce.footprint import model_footprint
from sconce_quant.int4cpu import int4cpu_unavailable
from sconce_quant.lowbit import (
    ROW_SPLIT_MIN,
    NBitsKernel,
    nbits_session,
    nbits_unavailable,
    shard_rows,
)
from sconce_quant.modules import WeightOnlyEmbedding, WeightOnlyLinear
from sconce_quant.packing import nbits_block_ok, pack_nbits, unpack_nbits
from sconce_quant.qparams import rtn_group_codes
from sconce_quant.weight_only import WeightOnly, WeightOnlyConfig, choose_shards

needs_ort = pytest.mark.skipif(nbits_unavailable() is not None,
                               reason=f"MatMulNBits unavailable: {nbits_unavailable()}")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("cols, block", [(64, 16), (40, 16), (576, 128), (33, 32)])
def test_nbits_packing_round_trips_exactly(bits: int, cols: int, block: int) -> None:
    generator = torch.Generator().manual_seed(cols)
    groups = -(-cols // block)
    codes = torch.randint(0, 2**bits, (7, cols), generator=generator, dtype=torch.uint8)
    scales = torch.rand(7, groups, generator=generator).to(torch.float16)
    zeros = torch.randint(0, 2**bits, (7, groups), generator=generator, dtype=torch.uint8)
    nbits = pack_nbits(codes, scales, zeros, bits=bits, block_size=block)
    assert nbits.packed.shape == (7, groups, block * bits // 8)
    assert nbits.zero_points.shape == (7, -(-groups * bits // 8))
    back_codes, back_scales, back_zeros = unpack_nbits(nbits)
    assert torch.equal(back_codes, codes) and torch.equal(back_zeros, zeros)
    assert torch.equal(back_scales.to(torch.float16), scales)  # float16 -> float32 is exact


def test_nbits_packing_puts_the_even_code_in_the_low_nibble() -> None:
    codes = torch.tensor([[1, 2] + [0] * 14, [15, 0] + [0] * 14], dtype=torch.uint8)
    zeros = torch.tensor([[3], [12]], dtype=torch.uint8)
    nbits = pack_nbits(codes, torch.ones(2, 1), zeros, bits=4, block_size=16)
    assert nbits.packed[:, 0, 0].tolist() == [0x21, 0x0F]
    assert nbits.zero_points[:, 0].tolist() == [3, 12]


def test_nbits_packing_rejects_what_the_kernel_cannot_hold() -> None:
    codes = torch.zeros(2, 32, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="powers of two"):
        pack_nbits(codes, torch.ones(2, 1), torch.zeros(2, 1), bits=4, block_size=24)
    with pytest.raises(ConfigError, match="4- or 8-bit"):
        pack_nbits(codes, torch.ones(2, 1), torch.zeros(2, 1), bits=3, block_size=32)
    with pytest.raises(ConfigError, match="0..15"):
        pack_nbits(codes + 16, torch.ones(2, 1), torch.zeros(2, 1), bits=4, block_size=32)
    assert nbits_block_ok(128, 576) and not nbits_block_ok(0, 576) and nbits_block_ok(0, 512)


@needs_ort
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("cols, group", [(64, 32), (576, 128), (72, 16)])
def test_the_kernel_computes_the_dequantized_matmul(bits: int, cols: int, group: int) -> None:
    torch.manual_seed(cols + bits)
    linear = nn.Linear(cols, 48)
    codes = rtn_group_codes(linear.weight.detach(), bits, group, symmetric=False)
    reference = nn.functional.linear
    x = torch.randn(5, 3, cols)
    expected = reference(x, codes.dequantize(), linear.bias.detach())
    exact = NBitsKernel.from_codes(codes, linear.bias.detach(), accuracy_level=1)(x)
    torch.testing.assert_close(exact, expected, rtol=1e-4, atol=1e-4)  # float32 compute
    fast = NBitsKernel.from_codes(codes, linear.bias.detach(), accuracy_level=4)(x)
    # int8 compute: activations quantized per block of the input, so only close
    assert float((fast - expected).norm() / expected.norm()) < 0.02


@needs_ort
@pytest.mark.parametrize("accuracy_level", [1, 4])
def test_shards_and_split_rows_compute_what_one_session_computes(accuracy_level: int) -> None:
    torch.manual_seed(accuracy_level)
    linear = nn.Linear(128, 37)  # 37 rows: shards of unequal size
    codes = rtn_group_codes(linear.weight.detach(), 4, 32, symmetric=False)
    bias = linear.bias.detach()
    one = NBitsKernel.from_codes(codes, bias, accuracy_level=accuracy_level)
    three = NBitsKernel.from_codes(codes, bias, accuracy_level=accuracy_level, shards=3)
    assert len(three.sessions()) == 3
    previous = torch.get_num_threads()
    try:
        for rows in (1, ROW_SPLIT_MIN + 3):  # one token; enough rows to split across threads
            x = torch.randn(rows, 128)
            torch.set_num_threads(1)
            alone = one(x)
            torch.set_num_threads(2)
            torch.testing.assert_close(one(x), alone, rtol=0, atol=0)  # rows split or not
            torch.testing.assert_close(three(x), alone, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(previous)
    # the rows of each shard are the packed weight's own rows
    packed = pack_nbits(codes.codes, codes.scales, codes.zeros, bits=4, block_size=32)
    middle = shard_rows(packed, 10, 20)
    assert torch.equal(unpack_nbits(middle)[0], codes.codes[10:20])


@needs_ort
def test_the_chosen_shards_are_measured_recorded_and_restored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 8))
    layers = [WeightOnlyLinear.from_codes(
        rtn_group_codes(m.weight.detach(), 4, 32, symmetric=False), m.bias.detach(),
        kernel="onnxruntime") for m in (big[0], big[2])]
    note = choose_shards(layers, threads=2)
    assert {layer.shards for layer in layers} <= {1, 2}
    assert ("split across 2 threads" in note) == any(layer.shards == 2 for layer in layers)
    assert choose_shards(layers, threads=1) == ""  # one thread: nothing to split across

    model, ctx = _lm_ctx()
    assert ctx.data is not None
    result = sconce.compress(model, ctx.data, recipe=[("quant.weight_only", {
        "method": "rtn", "group_size": 32, "kernel": "onnxruntime"})],
        finetune_epochs=0, out=tmp_path, metrics=["size"], progress=False)
    chosen = {name: m.shards for name, m in result.model.named_modules()
              if isinstance(m, WeightOnlyLinear)}
    loaded = sconce.load(tmp_path, model=TinyLM())
    assert {name: m.shards for name, m in loaded.named_modules()
            if isinstance(m, WeightOnlyLinear)} == chosen


@needs_ort
def test_weight_only_layers_run_either_kernel_and_share_one_state_dict() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    codes = rtn_group_codes(linear.weight.detach(), 4, 32, symmetric=False)
    layers = {kernel: WeightOnlyLinear.from_codes(codes, linear.bias.detach(), kernel=kernel,
                                                  accuracy_level=1)
              for kernel in ("dequantize", "onnxruntime")}
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(layers["onnxruntime"](x), layers["dequantize"](x),
                                   rtol=1e-4, atol=1e-4)
    state = layers["onnxruntime"].state_dict()
    assert set(state) == {"qweight", "scales", "zeros", "bias"}
    # new codes loaded into a layer that already ran: its kernel repacks them
    other = rtn_group_codes(torch.randn(32, 64), 4, 32, symmetric=False)
    fresh = WeightOnlyLinear.from_codes(other, torch.zeros(32), accuracy_level=1)
    layers["onnxruntime"].load_state_dict(fresh.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layers["onnxruntime"](x), fresh(x), rtol=1e-4, atol=1e-4)


@needs_ort
def test_auto_times_every_kernel_and_the_choices_survive_save_and_load(tmp_path: Path) -> None:
    model, ctx = _lm_ctx()
    assert ctx.data is not None
    result = sconce.compress(model, ctx.data,
                             recipe=[("quant.weight_only", {"method": "rtn", "group_size": 32})],
                             finetune_epochs=0, out=tmp_path, metrics=["size"], progress=False)
    note = result.report.stages[-1].notes["weight-only kernel"]
    assert "auto, measured on the model's layers at batch 1 (one token): dequantize" in note
    assert "onnxruntime" in note and "torch" in note
    chosen = {name: m.kernel for name, m in result.model.named_modules()
              if isinstance(m, WeightOnlyLinear)}
    assert set(chosen.values()) <= {"dequantize", "onnxruntime", "torch"}
    loaded = sconce.load(tmp_path, model=TinyLM())
    assert {name: m.kernel for name, m in loaded.named_modules()
            if isinstance(m, WeightOnlyLinear)} == chosen
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), result.model(ids), rtol=0, atol=0)


def test_groups_the_kernel_cannot_hold_fall_back_to_dequantizing() -> None:
    model, ctx = _lm_ctx()
    quantized = WeightOnly().apply(model, WeightOnlyConfig(method="rtn", group_size=24), ctx)
    note = ctx.stage.notes["weight-only kernel"]
    assert note.startswith("dequantize for 6 layers")
    assert "onnxruntime not used: its groups are not powers of two" in note
    assert "torch not used: it needs groups of 32, 64, 128, 256 inputs" in note
    assert all(m.kernel == "dequantize" for m in quantized.modules()
               if isinstance(m, WeightOnlyLinear))


def test_tied_embeddings_share_one_int8_matrix(tmp_path: Path) -> None:
    model, ctx = _lm_ctx()
    reference = TinyLM().eval()
    reference.load_state_dict(model.state_dict())
    float_bytes = model_footprint(reference).nbytes
    config = WeightOnlyConfig(method="rtn", group_size=32, tied="int8", kernel="dequantize")
    quantized = WeightOnly().apply(model, config, ctx)
    assert isinstance(quantized.head, WeightOnlyLinear) and quantized.head.bits == 8
    assert isinstance(quantized.embed, WeightOnlyEmbedding)
    assert quantized.embed.head is quantized.head
    assert ctx.stage.notes["tied embeddings"] == "embed reads int8 head"
    ids = torch.randint(0, 64, (4, 16))
    with torch.no_grad():
        torch.testing.assert_close(quantized.embed(ids), quantized.head.dequantized_weight()[ids])
        error = (quantized(ids) - reference(ids)).norm() / reference(ids).norm()
    assert float(error) < 0.15
    # the matrix is stored (and counted) once: 64 x 32 int8 codes + 64 x 1 scale/zero pairs
    state = quantized.state_dict()
    assert not any(key.startswith("embed.") for key in state)
    head_bytes = 64 * 32 + 64 * (2 + 1)
    embedding_float = 64 * 32 * 4
    assert model_footprint(quantized).nbytes < float_bytes - embedding_float + head_bytes
    restored = WeightOnly().restore(TinyLM().eval(), config, ctx.stage.restore_record or {})
    restored.load_state_dict(state)
    assert restored.embed.head is restored.head
    with torch.no_grad():
        torch.testing.assert_close(restored(ids), quantized(ids), rtol=0, atol=0)


@needs_ort
def test_sessions_read_the_layer_codes_in_place_when_rows_fill_whole_groups() -> None:
    torch.manual_seed(0)
    aligned = WeightOnlyLinear.from_codes(rtn_group_codes(torch.randn(6, 64), 4, 32,
                                                          symmetric=False), None)
    weight = aligned.nbits_weight()
    assert weight.packed.data_ptr() == aligned.qweight.data_ptr()
    session, values = nbits_session(weight, None, accuracy_level=4)
    assert values[0].data_ptr() == aligned.qweight.data_ptr()  # no copy handed to ORT
    x = torch.randn(2, 64)
    out = session.run(None, {"A": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), x @ aligned.dequantized_weight().t(),
                               rtol=0.05, atol=0.05)
    # 48 inputs in groups of 32: the rows are padded to two whole groups in a new tensor
    padded = WeightOnlyLinear.from_codes(rtn_group_codes(torch.randn(6, 48), 4, 32,
                                                         symmetric=False), None)
    assert padded.nbits_weight().packed.shape == (6, 2, 16)


def test_restoring_on_a_meta_model_allocates_no_codes() -> None:
    model, ctx = _lm_ctx()
    config = WeightOnlyConfig(bits=4, method="rtn", group_size=16, kernel="dequantize",
                              tied="int8")
    WeightOnly().apply(model, config, ctx)
    with torch.device("meta"):
        skeleton = TinyLM()
    restored = WeightOnly().restore(skeleton, config, ctx.stage.restore_record)
    layers = [m for m in restored.modules() if isinstance(m, WeightOnlyLinear)]
    assert len(layers) == 7  # two per block and the head
    assert all(b.is_meta for m in layers for b in m.buffers())


@pytest.mark.skipif(int4cpu_unavailable(4, 32, 64, 64) is not None,
                    reason="ATen's int4 CPU kernel unavailable")
def test_kernels_are_timed_on_sweeps_through_the_models_layers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sconce_quant.weight_only as weight_only

    monkeypatch.setattr(weight_only, "SWEEP_LAYERS", 3)
    copied: list[tuple[int, str]] = []
    copy_on = weight_only._copy_on

    def counting(layer: WeightOnlyLinear, kernel: str) -> WeightOnlyLinear:
        copied.append((layer.out_features, kernel))
        return copy_on(layer, kernel)

    monkeypatch.setattr(weight_only, "_copy_on", counting)
    layers = [WeightOnlyLinear.from_codes(rtn_group_codes(torch.randn(rows, 64), 4, 32,
                                                          symmetric=False), None)
              for rows in (64, 64, 64, 64, 128)]
    wide, narrow = (weight_only._shape_key(layers[i]) for i in (4, 0))
    kernels = {narrow: ["dequantize", "torch"], wide: ["torch"]}
    times = weight_only.per_token_seconds(layers, kernels, threads=1, rounds=2)
    assert set(times) == {narrow, wide}
    assert set(times[narrow]) == {"dequantize", "torch"} and set(times[wide]) == {"torch"}
    assert all(seconds > 0 for by_kernel in times.values() for seconds in by_kernel.values())
    # the first SWEEP_LAYERS layers of a shape for a low-bit kernel, one for dequantize
    assert sorted(copied) == [(64, "dequantize"), (64, "torch"), (64, "torch"), (64, "torch"),
                              (128, "torch")]
