"""Layer norms rewritten as plain reductions for ONNX Runtime: the same outputs as ORT's fused
kernels, ORT keeps the rewritten form, unsupported forms stay fused, ``quant.dynamic`` uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from quant_helpers import Encoder
from torch import nn

from sconce.context import Context
from sconce_quant.dynamic import DynamicConfig, DynamicInt8
from sconce_quant.engines.ortmodule import export_onnx_bytes
from sconce_quant.engines.ortnorm import decompose_layer_norms

pytest.importorskip("onnxruntime")


def _run(onnx_bytes: bytes, feeds: dict[str, np.ndarray], optimized: Path | None = None
         ) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _skip_layer_norm_graph(*, with_bias: bool, sum_output: bool) -> bytes:
    """One ``SkipLayerNormalization`` (com.microsoft) on 2 x 5 x 16, its sum output a graph
    output when ``sum_output``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) + 1, "gamma"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "beta")]
    inputs = ["x", "skip", "gamma", "beta"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias"))
        inputs.append("bias")
    outputs = ["y", "", "", "total"] if sum_output else ["y"]
    node = helper.make_node("SkipLayerNormalization", inputs, outputs, domain="com.microsoft",
                            epsilon=1e-5)
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5, 16])
             for n in ("x", "skip")]
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                     for n in outputs if n]
    graph = helper.make_graph([node], "skip", value, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: (3 * rng.standard_normal((2, 5, 16)) + 2).astype(np.float32)
            for name in ("x", "skip")}


@pytest.mark.parametrize("with_bias, sum_output", [(True, False), (False, False), (True, True)])
def test_skip_layer_norm_rewrite_matches_the_fused_kernel(with_bias: bool,
                                                          sum_output: bool) -> None:
    fused = _skip_layer_norm_graph(with_bias=with_bias, sum_output=sum_output)
    plain, count = decompose_layer_norms(fused)
    assert count == 1
    expected, got = _run(fused, _feeds()), _run(plain, _feeds())
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_layer_norm_rewrite_matches_torch_and_ort_keeps_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16)).eval()
    with torch.no_grad():
        model[1].weight.normal_(1.0, 0.3)
        model[1].bias.normal_(0.0, 0.3)
    x = torch.randn(3, 7, 16) * 4
    exported = export_onnx_bytes(model, x)
    plain, count = decompose_layer_norms(exported)
    assert count == 1
    optimized = tmp_path / "optimized.onnx"
    (got,) = _run(plain, {"input_0": x.numpy()}, optimized)
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)
    import onnx

    kinds = {node.op_type for node in onnx.load(str(optimized)).graph.node}
    assert "ReduceMean" in kinds and "LayerNormalization" not in kinds  # not fused back


def test_layer_norm_over_another_axis_stays_fused() -> None:
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=1)
    inits = [numpy_helper.from_array(np.ones((5, 16), np.float32), "gamma"),
             numpy_helper.from_array(np.zeros((5, 16), np.float32), "beta")]
    graph = helper.make_graph(
        [node], "axis1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx_bytes = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert decompose_layer_norms(onnx_bytes) == (onnx_bytes, 0)


def test_dynamic_int8_on_onnxruntime_runs_the_rewritten_layer_norms() -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    ids = torch.randint(0, 100, (4, 12))
    ctx = Context.for_inputs(ids)
    quantized = DynamicInt8().apply(model, DynamicConfig(engine="onnxruntime"), ctx)
    record = ctx.stage.restore_record
    assert record is not None and record["decomposed_layer_norms"] == 4
    assert "4 as plain reductions" in ctx.stage.notes["layer norms"]
    with torch.no_grad():
        reference = model(ids)
        assert float((quantized(ids) - reference).norm() / reference.norm()) < 0.05
