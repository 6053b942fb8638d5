"""GPTQ rounding in the ONNX Runtime engine: ORT recovers exactly the codes GPTQ chose, each
layer's output error on the calibration inputs shrinks, skipped layers keep their weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from quant_helpers import Attention, SmallCNN
from torch import nn
from torch.utils.data import DataLoader

from sconce_quant.engines import ENGINES, StaticSettings
from sconce_quant.engines.ortgptq import round_weights
from sconce_quant.engines.ortstem import float_stem

pytest.importorskip("onnxruntime")


class Tokens(nn.Module):
    """A transformer layer on float token vectors: its Linear layers export as MatMul."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = Attention(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _cnn_batches(loaders: dict[str, DataLoader]) -> list[torch.Tensor]:
    return [x for (x, _), _ in zip(loaders["train"], range(4), strict=False)]


def _token_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(8, 6, 16, generator=generator) for _ in range(4)]


def _initializers(onnx_bytes: bytes) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _models(loaders: dict[str, DataLoader], cnn: SmallCNN
            ) -> list[tuple[nn.Module, list[torch.Tensor]]]:
    torch.manual_seed(0)
    return [(cnn, _cnn_batches(loaders)), (Tokens().eval(), _token_batches())]


@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_onnxruntime_keeps_exactly_the_codes_gptq_chose(
        reduce_range: bool, per_channel: bool, cnn: SmallCNN,
        loaders: dict[str, DataLoader]) -> None:
    settings = StaticSettings(reduce_range=reduce_range, per_channel=per_channel)
    qmax = 64 if reduce_range else 127
    kinds = set()
    for model, batches in _models(loaders, cnn):
        prepared = ENGINES["onnxruntime"].prepare(model, batches, settings)
        kinds |= {site.kind for site, _ in prepared.hessians.values()}
        rounded_bytes, count = round_weights(prepared.float_bytes, prepared.hessians,
                                             qmax=qmax, per_channel=per_channel)
        assert count == len(prepared.hessians) > 0
        rounded = _initializers(rounded_bytes)
        quantized = _initializers(prepared.build().module.onnx_bytes())
        stem = float_stem(prepared.float_bytes).nodes  # kept float with its own weights
        original = _initializers(prepared.float_bytes)
        for node, (site, _) in prepared.hessians.items():
            if node in stem:
                np.testing.assert_array_equal(quantized[site.weight], original[site.weight])
                continue
            codes = quantized[f"{site.weight}_quantized"].astype(np.float64)
            scale = quantized[f"{site.weight}_scale"].astype(np.float64)
            if scale.ndim:  # per channel, along the output axis
                shape = [1] * codes.ndim
                shape[site.rows_axis] = -1
                scale = scale.reshape(shape)
            assert np.abs(codes).max() <= qmax
            np.testing.assert_allclose(codes * scale, rounded[site.weight], rtol=1e-5,
                                       atol=1e-7)
    assert kinds == {"conv", "gemm", "matmul"}


def test_gptq_lowers_every_layers_output_error_on_the_calibration_inputs(
        cnn: SmallCNN, loaders: dict[str, DataLoader]) -> None:
    for model, batches in _models(loaders, cnn):
        prepared = ENGINES["onnxruntime"].prepare(model, batches, StaticSettings())
        rounded = _initializers(round_weights(prepared.float_bytes, prepared.hessians,
                                              qmax=64, per_channel=True)[0])
        original = _initializers(prepared.float_bytes)
        for site, hessian in prepared.hessians.values():
            w = site.as_rows(original[site.weight]).double()
            step = w.abs().amax(dim=1, keepdim=True) / 64
            nearest = (w / step).round() * step
            gptq = site.as_rows(rounded[site.weight]).double()
            h = hessian.double()

            def error(q: torch.Tensor, h: torch.Tensor = h, w: torch.Tensor = w) -> float:
                d = q - w
                return float(torch.trace(d @ h @ d.t()))

            assert error(gptq) < error(nearest), site.node


def test_layers_kept_in_float_keep_their_weights_and_nearest_rounds_nothing(
        cnn: SmallCNN, loaders: dict[str, DataLoader]) -> None:
    batches = _cnn_batches(loaders)
    prepared = ENGINES["onnxruntime"].prepare(cnn, batches, StaticSettings())
    nodes = sorted(prepared.hessians)
    kept = nodes[0]
    rounded_bytes, count = round_weights(prepared.float_bytes, prepared.hessians, qmax=64,
                                         per_channel=True, exclude=[kept])
    assert count == len(nodes) - 1
    site = prepared.hessians[kept][0]
    np.testing.assert_array_equal(_initializers(rounded_bytes)[site.weight],
                                  _initializers(prepared.float_bytes)[site.weight])
    mixed = prepared.build(["features.0.0"])
    assert mixed.record["gptq_rounded_layers"] == len(nodes) - 1
    nearest = ENGINES["onnxruntime"].prepare(
        cnn, batches, StaticSettings(weight_rounding="nearest"))
    assert nearest.hessians == {} and nearest.build().record["gptq_rounded_layers"] == 0
