"""sparse.storage: outputs unchanged, the size metric and the file shrink together, int8 layers
keep their exact int8 weights, dense models get a note."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from sparse_helpers import QUICK, SmallCNN, blob_data, sparsify_, unstructured
from torch import nn

import sconce
from sconce.context import Context
from sconce_sparse.config import StorageConfig
from sconce_sparse.convert import restore_layers
from sconce_sparse.quantized import SparseQuantized
from sconce_sparse.storage import SparseStorage


def test_stored_model_runs_exactly_like_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sparsify_(SmallCNN(), 0.9)
    result = sconce.compress(model, blob_data(), recipe=["sparse.storage"], finetune_epochs=0,
                             out=tmp_path, timing=QUICK, progress=False,
                             metrics=["params", "nonzero_params", "size"])
    original, stored = result.report.stages
    assert stored.title == "Converted"
    assert stored.values["params"] == original.values["params"]
    assert stored.values["nonzero_params"] == original.values["nonzero_params"]
    assert stored.values["size"] < 0.3 * original.values["size"]
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(result.model(x), model(x))  # decoded weights, dense kernels
        assert torch.equal(sconce.load(tmp_path, model=SmallCNN())(x), model(x))


def test_a_dense_model_asked_to_be_stored_sparse_gets_a_note() -> None:
    model = SmallCNN()
    ctx = Context.for_inputs(torch.randn(1, 1, 8, 8))
    out = SparseStorage().apply(model, StorageConfig(), ctx)
    assert out is model and all(type(m).__module__.startswith("torch") for m in out.modules()
                                if m is not model)
    assert ctx.stage.notes["sparse layers"].startswith("none")
    assert "features.0" in ctx.stage.notes["left as they are"]


def test_skip_layers_and_an_unknown_name() -> None:
    import pytest

    from sconce.errors import ConfigError

    model = sparsify_(SmallCNN(), 0.9)
    ctx = Context.for_inputs(torch.randn(1, 1, 8, 8))
    out = SparseStorage().apply(model, StorageConfig(skip_layers=("classifier.*",)), ctx)
    assert type(out.classifier[1]) is nn.Linear and type(out.features[0]).__name__ == "SparseConv"
    with pytest.raises(ConfigError, match="skip_layers: no module is called 'clasifier'"):
        SparseStorage().apply(model, StorageConfig(skip_layers=("clasifier",)), ctx)


def _int8_mlp(seed: int) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.manual_seed(seed)
    model = sparsify_(nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 16)), 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig})


def test_int8_layers_are_stored_with_int8_values_and_load_back_exactly() -> None:
    quantized = _int8_mlp(0)
    ctx = Context.for_inputs(torch.randn(1, 256))
    stored = SparseStorage().apply(copy.deepcopy(quantized), StorageConfig(), ctx)
    assert isinstance(stored[0], SparseQuantized)
    assert stored[0].weight_values.dtype == torch.int8
    assert "int8 engine" in ctx.stage.notes["int8 layers"]
    dense_int8 = quantized[0].weight().numel()
    assert stored[0].stored_nbytes < 0.3 * dense_int8
    buffer = io.BytesIO()
    torch.save(stored.state_dict(), buffer)
    fresh = restore_layers(_int8_mlp(1), ctx.stage.restore_record["layers"])
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for index in (0, 2):
        assert torch.equal(fresh[index].inner.weight().int_repr(),
                           quantized[index].weight().int_repr())
    x = torch.randn(4, 256)
    assert torch.equal(fresh(x), quantized(x))


def test_a_static_int8_conv_keeps_its_output_quantization() -> None:
    import torch.ao.nn.quantized as nnq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = nnq.Conv2d(8, 16, 3, padding=1)
        weight = unstructured(torch.randn(16, 8, 3, 3), 0.8)
        scales = weight.abs().amax(dim=(1, 2, 3)).clamp(min=1e-3) / 127
        conv.set_weight_bias(torch.quantize_per_channel(
            weight, scales.double(), torch.zeros(16, dtype=torch.long), 0, torch.qint8),
            torch.randn(16))
        conv.scale, conv.zero_point = 0.05, 3
        wrapped = SparseQuantized.wrap(conv)
        fresh = SparseQuantized(nnq.Conv2d(8, 16, 3, padding=1), per_channel=True)
        fresh.load_state_dict(wrapped.state_dict())
        x = torch.quantize_per_tensor(torch.randn(2, 8, 6, 6), 0.05, 64, torch.quint8)
        assert (fresh.inner.scale, fresh.inner.zero_point) == (0.05, 3)
        assert torch.equal(fresh(x).int_repr(), conv(x).int_repr())
