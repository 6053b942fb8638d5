"""``quant.qat``: fine-tuning under simulated int8, then the same int8 engines; save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import SmallCNN
from torch import nn

import sconce
from sconce.context import Context
from sconce.errors import ConfigError
from sconce_quant.qat import QATConfig, QuantizationAwareTraining
from sconce_quant.simulate import FakeQuantLayer, calibrate_inputs, simulated


def test_simulation_matches_the_int8_grid(cnn: SmallCNN, data: sconce.Data) -> None:
    x = data.example_inputs(16)
    estimators = calibrate_inputs(cnn, ["classifier.3"], [x])
    low, high = estimators["classifier.3"].range("minmax")
    with simulated(cnn, {"classifier.3": (low, high)}, levels=256, per_channel=True):
        layer = cnn.classifier[3]
        assert isinstance(layer, FakeQuantLayer)
        weight = layer.quantized_weight()
        scales = weight.detach().abs().amax(1) / 127
        codes = weight.detach() / scales[:, None]
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)
        with torch.no_grad():
            simulated_out = cnn(x)
    assert isinstance(cnn.classifier[3], nn.Linear)  # unwrapped afterwards
    with torch.no_grad():
        assert float((simulated_out - cnn(x)).norm() / cnn(x).norm()) < 0.05


def test_qat_fine_tunes_with_fake_quant_and_converts(cnn: SmallCNN, data: sconce.Data,
                                                     tmp_path: Path) -> None:
    before = cnn.classifier[1].weight.detach().clone()
    result = sconce.compress(cnn, data, recipe=[("quant.qat", {"epochs": 1, "engine": "fx"})],
                             out=tmp_path, metrics=["accuracy", "size"], progress=False)
    original, quantized = result.report.stages
    notes = quantized.notes
    assert notes["quantization-aware training"].startswith("1 epoch(s) with 4 layer(s)")
    assert "distilled from the original" in notes["quantization-aware training"]
    assert notes["int8 engine"].startswith("fx")
    assert quantized.values["accuracy"] >= original.values["accuracy"] - 1.0
    assert original.values["size"] / quantized.values["size"] > 3.0
    assert torch.equal(cnn.classifier[1].weight, before)  # the caller's model is untouched
    loaded = sconce.load(tmp_path, model=SmallCNN())
    x = data.example_inputs(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_qat_trains_the_weights_under_fake_quant(cnn: SmallCNN, data: sconce.Data) -> None:
    seen: list[bool] = []
    original_finetune = Context.finetune

    def spy(self: Context, model: nn.Module, *args: object, **kwargs: object) -> nn.Module:
        seen.append(any(isinstance(m, FakeQuantLayer) for m in model.modules()))
        return original_finetune(self, model, *args, **kwargs)

    ctx = Context(data=data, progress=False)
    Context.finetune = spy  # type: ignore[method-assign]
    try:
        model = SmallCNN()
        model.load_state_dict(cnn.state_dict())
        QuantizationAwareTraining().apply(model, QATConfig(epochs=0.5, engine="onnxruntime"),
                                          ctx)
    finally:
        Context.finetune = original_finetune  # type: ignore[method-assign]
    assert seen == [True]
    assert ctx.stage.finetuned
    assert not torch.equal(model.classifier[1].weight, cnn.classifier[1].weight)


def test_qat_without_a_budget_is_post_training_quantization(cnn: SmallCNN,
                                                            data: sconce.Data) -> None:
    ctx = Context(data=data, finetune_epochs=0, progress=False)
    QuantizationAwareTraining().apply(cnn, QATConfig(engine="onnxruntime"), ctx)
    assert "skipped" in ctx.stage.notes["quantization-aware training"]
    assert not ctx.stage.finetuned


def test_bad_qat_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="epochs"):
        QATConfig(epochs=-1)
    with pytest.raises(ConfigError, match="lr"):
        QATConfig(lr=0.0)
