"""``quant.int8`` end to end: accuracy, size, report notes, save/load, errors, mixed precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import SmallCNN, blob_images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.context import Context
from sconce.errors import ConfigError, DataError
from sconce_quant.static import Int8Config, StaticInt8

QUICK = sconce.TimingSettings(threads=1, rounds=1, round_seconds=0.01, warmup_seconds=0.01,
                              batch_size=8)
METRICS = ["accuracy", "params", "size", "latency"]


@pytest.mark.parametrize("engine", ["auto", "onnxruntime", "pt2e", "fx"])
def test_int8_through_compress_is_accurate_small_and_reloads(
        engine: str, cnn: SmallCNN, data: sconce.Data, tmp_path: Path) -> None:
    result = sconce.compress(cnn, data, recipe=[("quant.int8", {"engine": engine})],
                             finetune_epochs=0, out=tmp_path, timing=QUICK, metrics=METRICS,
                             progress=False)
    original, quantized = result.report.stages
    assert quantized.title == "Quantized"
    assert quantized.values["accuracy"] >= original.values["accuracy"] - 1.0
    assert original.values["size"] / quantized.values["size"] > 3.0  # tiny: scales weigh
    assert quantized.values["params"] == pytest.approx(original.values["params"], rel=0.02)
    notes = quantized.notes
    assert notes["int8 engine"].startswith(engine if engine != "auto" else "")
    if engine == "auto":
        assert "auto, measured: onnxruntime:" in notes["int8 engine"]
        assert "pt2e:" in notes["int8 engine"] and "fx:" in notes["int8 engine"]
    assert notes["calibration"].startswith("mse on ")
    loaded = sconce.load(tmp_path, model=SmallCNN())
    x = data.example_inputs(8)  # a shape the timing compiled PT2E models for
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())


def test_the_input_model_is_left_alone(cnn: SmallCNN, ctx: Context) -> None:
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    StaticInt8().apply(cnn, Int8Config(engine="fx"), ctx)
    after = cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_empty_calibration_data_is_a_clear_error(cnn: SmallCNN,
                                                 loaders: dict[str, DataLoader]) -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    data = sconce.Data(train=loaders["train"], test=loaders["test"], calibration=empty)
    with pytest.raises(DataError, match="quant.int8 calibrates activations on real inputs: "
                                        "the calibration data is empty"):
        StaticInt8().apply(cnn, Int8Config(), Context(data=data))
    with pytest.raises(DataError, match="needs data"):
        StaticInt8().apply(cnn, Int8Config(), Context.for_inputs(torch.zeros(1, 1, 8, 8)))


@pytest.mark.parametrize("field, value, message", [
    ("bits", 4, "bits must be one of 8"),
    ("engine", "tensorrt", "engine must be one of 'auto', 'onnxruntime', 'pt2e', 'fx'"),
    ("calibration", "entropy", "calibration must be one of"),
    ("percentile", 50.0, "percentile must be in"),
    ("calibration_samples", 0, "calibration_samples must be > 0"),
])
def test_bad_settings_are_config_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Int8Config.from_dict({field: value})


class Unquantizable(nn.Module):
    """SmallCNN with an operator no int8 engine runs (erf) in the middle."""

    def __init__(self, base: SmallCNN) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.classifier(torch.erf(self.base.features(x)))


@pytest.mark.parametrize("engine", ["onnxruntime", "fx"])
def test_an_unquantizable_operator_stays_float_and_is_named(
        engine: str, cnn: SmallCNN, ctx: Context) -> None:
    model = Unquantizable(cnn).eval()
    quantized = StaticInt8().apply(model, Int8Config(engine=engine), ctx)
    note = ctx.stage.notes["left in float (engine cannot quantize)"]
    assert "erf" in note.lower()
    x = ctx.example_inputs(32)
    with torch.no_grad():
        agree = (quantized(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree >= 0.95


def _plant_outlier(model: SmallCNN) -> SmallCNN:
    """Make classifier.1's first unit 1000x larger (and classifier.3 read it 1000x weaker):
    the float function is unchanged, but per-tensor int8 of classifier.1's weight and of
    classifier.3's input loses everything but that unit."""
    with torch.no_grad():
        model.classifier[1].weight[0] *= 1000.0
        model.classifier[1].bias[0] *= 1000.0
        model.classifier[3].weight[:, 0] /= 1000.0
    return model


@pytest.mark.parametrize("engine", ["onnxruntime", "fx"])
def test_mixed_precision_keeps_the_sensitive_layers_float_within_the_budget(
        engine: str, cnn: SmallCNN, data: sconce.Data) -> None:
    model = _plant_outlier(cnn)
    config = Int8Config(engine=engine, per_channel=False, calibration="minmax")
    plain = StaticInt8().apply(model, config, Context(data=data))
    plain_accuracy = Context(data=data).evaluate(plain).accuracy
    reference = Context(data=data).evaluate(model).accuracy
    assert plain_accuracy < reference - 5.0  # the planted outlier really hurts int8

    ctx = Context(data=data, teacher=model, constraints=sconce.Constraints(max_accuracy_drop=1.0))
    quantized = StaticInt8().apply(model, config, ctx)
    kept = ctx.stage.notes["kept in float (accuracy budget)"]
    assert "classifier." in kept and "features" not in kept
    assert ctx.stage.notes["accuracy budget"].endswith(": met")
    assert ctx.evaluate(quantized).accuracy >= reference - 1.0
    assert any(p.name == "quant_sensitivity.png" and p.is_file() for p in ctx.stage.artifacts)
    # the record keeps the float layers, so reloading rebuilds the same mixed structure
    record = ctx.stage.restore_record
    assert record is not None and set(record["skip"]) == {
        part.split(" ")[0] for part in kept.split(", ")}


def test_no_budget_work_when_int8_already_meets_it(cnn: SmallCNN, data: sconce.Data) -> None:
    ctx = Context(data=data, constraints=sconce.Constraints(max_accuracy_drop=5.0))
    StaticInt8().apply(cnn, Int8Config(engine="onnxruntime"), ctx)
    assert "kept in float (accuracy budget)" not in ctx.stage.notes
    assert ctx.stage.notes["accuracy budget"].endswith(": met")


def test_blob_data_is_learnable(trained_cnn: SmallCNN) -> None:
    data = sconce.Data.from_value({"test": DataLoader(blob_images(256, 1), batch_size=64)})
    assert Context(data=data).evaluate(trained_cnn, "test").accuracy > 95.0
