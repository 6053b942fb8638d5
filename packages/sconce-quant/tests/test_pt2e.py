"""The PT2E engine (torchao ``X86InductorQuantizer`` + inductor): close to float, oneDNN int8
kernels, sconce's calibration, restores exactly, exports to ONNX. Compiling is slow, so one
built model is shared by the tests (compiled once per input shape)."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from quant_helpers import SmallCNN
from torch import nn
from torch.utils.data import DataLoader

from sconce_quant.dynamic import DynamicConfig, Pt2eDynamicEngine
from sconce_quant.engines import ENGINES, StaticSettings
from sconce_quant.engines.base import Built
from sconce_quant.engines.pt2e import Pt2eModule

pytestmark = pytest.mark.skipif(ENGINES["pt2e"].unavailable() is not None,
                                reason=f"pt2e unavailable: {ENGINES['pt2e'].unavailable()}")
SETTINGS = StaticSettings(reduce_range=True)


@pytest.fixture(scope="module")
def built(trained_cnn: SmallCNN, loaders: dict[str, DataLoader]) -> dict[str, Any]:
    """The trained CNN on PT2E, compiled once (batch 64), with inductor's generated code."""
    from torch._inductor.utils import run_and_get_code

    torch.set_num_threads(1)
    batches = [x for (x, _), _ in zip(loaders["train"], range(4), strict=False)]
    model = copy.deepcopy(trained_cnn).eval()
    result = ENGINES["pt2e"].prepare(model, batches, SETTINGS).build()
    x = next(iter(loaders["test"]))[0]
    output, code = run_and_get_code(result.module, x)
    return {"built": result, "model": model, "x": x, "output": output, "code": "\n".join(code),
            "batches": batches}


def test_pt2e_is_close_to_float_and_everything_is_int8(built: dict[str, Any],
                                                        loaders: dict[str, DataLoader]) -> None:
    result: Built = built["built"]
    model, x = built["model"], built["x"]
    with torch.no_grad():
        reference = model(x)
    assert float((built["output"] - reference).norm() / reference.norm()) < 0.1
    agree = (built["output"].argmax(1) == reference.argmax(1)).float().mean()
    assert agree >= 0.97
    assert result.float_ops == []
    assert isinstance(result.module, Pt2eModule) and result.module.compile_seconds
    assert result.module.train() is result.module  # an int8 inference graph: stays in eval
    assert result.module.eval() is result.module  # the core calls eval()
    result.module.graph_module.eval()  # torch's ONNX exporter calls it on the graph


def test_pt2e_runs_onednn_int8_kernels(built: dict[str, Any]) -> None:
    code = built["code"]
    assert code.count("torch.ops.onednn.qconv_pointwise") == 2  # conv-bn-relu, fused
    assert code.count("torch.ops.onednn.qlinear_pointwise") == 2
    assert "torch.ops.onednn.qconv_prepack" not in code  # prepacked when compiled (frozen)


def test_pt2e_calibrates_with_sconces_estimator_and_per_channel_weights(
        built: dict[str, Any]) -> None:
    from sconce_quant.calibration import RangeEstimator
    from sconce_quant.qparams import affine_qparams

    result: Built = built["built"]
    estimator = RangeEstimator()  # the model's input, as the engine saw it
    for batch in built["batches"]:
        estimator.update(batch)
    low, high = estimator.range("mse", levels=128)
    expected_scale, expected_zero = affine_qparams(low, high, 0, 127)  # 7-bit: reduce_range
    scale, zero = result.record["activations"]["activation_post_process_0"]
    assert scale == pytest.approx(expected_scale, rel=1e-5)
    assert abs(zero - expected_zero) <= 1
    state = result.module.state_dict()
    assert state["graph_module._frozen_param0"].dtype == torch.int8
    assert state["graph_module._scale_0"].shape == (8,)  # one scale per output channel


def test_planted_ranges_give_the_expected_qparams() -> None:
    # input values planted in [-1, 3] and a weight whose channel maxima are planted
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -2.54, 0.0, 1.0], [0.127, 0.0, 0.0, 0.0],
                                            [-12.7, 1.0, 2.0, 3.0]]))
    x = torch.rand(64, 4) * 4 - 1
    x[0, 0], x[1, 1] = -1.0, 3.0
    settings = StaticSettings(calibration="minmax", reduce_range=False)
    result = ENGINES["pt2e"].prepare(model, [x], settings).build()
    scale, zero = result.record["activations"]["activation_post_process_0"]
    assert scale == pytest.approx(4.0 / 255, rel=1e-6) and zero == 64  # round(1 / (4/255))
    state = result.module.state_dict()
    codes, scales = state["graph_module._frozen_param0"], state["graph_module._scale_0"]
    torch.testing.assert_close(scales, torch.tensor([2.54, 0.127, 12.7]) / 127.5)
    # each channel's planted extreme lands on the end of the int8 grid (+-127.5 rounds to 128
    # and clamps at 127 on the positive side)
    assert set(codes.to(torch.int32).abs().amax(1).tolist()) <= {127, 128}


def test_pt2e_restores_exactly_from_a_weights_only_state_dict(built: dict[str, Any]) -> None:
    result: Built = built["built"]
    buffer = io.BytesIO()
    torch.save(result.module.state_dict(), buffer)
    buffer.seek(0)
    fresh = SmallCNN().eval()  # random weights: the int8 weights must come from the state dict
    restored = ENGINES["pt2e"].restore(fresh, result.record, SETTINGS)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(restored(built["x"]), built["output"], rtol=0, atol=0)


def test_pt2e_keeps_skipped_layers_and_unknown_operators_float(
        trained_cnn: SmallCNN, loaders: dict[str, DataLoader]) -> None:
    class WithSoftplus(nn.Module):
        def __init__(self, base: SmallCNN) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base.classifier(nn.functional.softplus(self.base.features(x)))

    model = WithSoftplus(copy.deepcopy(trained_cnn)).eval()
    batches = [x for (x, _), _ in zip(loaders["train"], range(2), strict=False)]
    result = ENGINES["pt2e"].prepare(model, batches, SETTINGS).build(["base.classifier.3"])
    assert result.float_layers == ["base.classifier.3"]
    assert "base.classifier.3 (linear)" in result.float_ops
    assert any("softplus" in op for op in result.float_ops)
    state = result.module.state_dict()
    assert state["graph_module.base.classifier.3.weight"].dtype == torch.float32
    assert "graph_module.base.classifier.1.weight" not in state  # only its int8 copy ships


def test_pt2e_quantizes_a_model_with_a_branch_it_never_returns() -> None:
    """A Hugging Face encoder under a mean-pooling head computes a pooler (Linear, Tanh) that
    nothing reads; torchao's quantizer failed on it (IndexError) before the dead branch was
    dropped from the exported graph."""
    class WithUnusedPooler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(16, 16)
            self.pool = nn.Sequential(nn.Linear(16, 16), nn.Tanh())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.body(x)
            self.pool(hidden[:, 0])  # the pooler output nobody uses
            return hidden.mean(1)

    torch.manual_seed(0)
    model = WithUnusedPooler().eval()
    batches = [torch.randn(4, 5, 16) for _ in range(2)]
    engine = Pt2eDynamicEngine(DynamicConfig(engine="pt2e"))
    result = engine.prepare(model, batches, None).build()
    with torch.no_grad():
        torch.testing.assert_close(result.module(batches[0]), model(batches[0]),
                                   rtol=0.05, atol=0.05)
