"""A thin first convolution stays float in ONNX Runtime's int8 model: the rewritten float graph
computes the same values, quantization starts after the pooling and stays there in the graph
ORT runs, wider or grouped first convolutions are quantized as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from quant_helpers import SmallCNN
from torch import nn
from torch.utils.data import DataLoader

from sconce_quant.engines import ENGINES, StaticSettings
from sconce_quant.engines.ortmodule import export_onnx_bytes
from sconce_quant.engines.ortstem import float_stem

pytest.importorskip("onnxruntime")


def _run(onnx_bytes: bytes, x: np.ndarray, optimized: Path | None = None) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_rewritten_float_graph_computes_the_same_values(cnn: SmallCNN) -> None:
    exported = export_onnx_bytes(cnn, torch.randn(2, 1, 8, 8))
    stem = float_stem(exported)
    assert stem.layers == ["features.0.0", "features.0.2", "features.1"]
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(stem.graph, x), _run(exported, x), rtol=0, atol=1e-6)


def test_an_rgb_stem_without_pooling_keeps_its_relu_in_place() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    exported = export_onnx_bytes(model, torch.randn(1, 3, 8, 8))
    stem = float_stem(exported)
    assert stem.layers == ["0", "1"]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(stem.graph, x), _run(exported, x))


def test_quantization_starts_after_the_pooling_in_the_graph_ort_runs(
        cnn: SmallCNN, loaders: dict[str, DataLoader], tmp_path: Path) -> None:
    import onnx

    batches = [x for (x, _), _ in zip(loaders["train"], range(4), strict=False)]
    built = ENGINES["onnxruntime"].prepare(cnn, batches, StaticSettings()).build()
    assert built.record["float_stem"] == ["features.0.0", "features.0.2", "features.1"]
    assert built.float_ops == []  # the stem is the engine's choice, reported apart
    saved = onnx.load_from_string(built.module.onnx_bytes()).graph
    first_conv = next(n for n in saved.node if n.op_type == "Conv")
    assert first_conv.input[1] in {i.name for i in saved.initializer}  # float weights
    optimized = tmp_path / "optimized.onnx"
    x = next(iter(loaders["test"]))[0]
    _run(built.module.onnx_bytes(), x.numpy(), optimized)
    ran = onnx.load(str(optimized)).graph
    producer = {out: node.op_type for node in ran.node for out in node.output}
    pools = {n.op_type: producer.get(n.input[0]) for n in ran.node if "MaxPool" in n.op_type}
    # the stem's pooling reads the float convolution (ORT's quantization propagation used to
    # put a quantize/dequantize pair between them and run the pooling on dequantized values,
    # 10x slower on the VGG); the other pooling runs in int8
    assert set(pools) == {"MaxPool", "NhwcMaxPool"}
    assert pools["MaxPool"] in {"Conv", "FusedConv", "ReorderOutput"}
    assert sum(n.op_type == "QLinearConv" for n in ran.node) == 1
    with torch.no_grad():
        reference = cnn(x)
        error = (built.module(x) - reference).norm() / reference.norm()
    assert error < 0.1


@pytest.mark.parametrize("first", [nn.Conv2d(4, 8, 3, padding=1),  # 36 products per output
                                   nn.Conv2d(4, 8, 3, padding=1, groups=4)])  # grouped
def test_wider_or_grouped_first_convolutions_are_quantized(first: nn.Conv2d) -> None:
    model = nn.Sequential(first, nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3)).eval()
    exported = export_onnx_bytes(model, torch.randn(1, first.in_channels, 8, 8))
    stem = float_stem(exported)
    assert stem.nodes == [] and stem.graph == exported
