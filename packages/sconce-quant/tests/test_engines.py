"""Every int8 engine: close to float, runs int8 kernels, restores exactly, keeps what it cannot
quantize in float and says so."""

from __future__ import annotations

import io

import pytest
import torch
from quant_helpers import SmallCNN
from torch import nn
from torch.utils.data import DataLoader

from sconce_quant.engines import ENGINES, EngineError, OrtModule, StaticSettings, choose_engine
from sconce_quant.engines.select import relative_error

# the engines whose models run without compiling; PT2E's (compiled per input shape, slow)
# has the same checks in test_pt2e.py, on one shared model
ENGINE_NAMES = [name for name, engine in ENGINES.items()
                if engine.unavailable() is None and name != "pt2e"]


def _batches(loaders: dict[str, DataLoader], count: int = 4) -> list[torch.Tensor]:
    return [x for (x, _), _ in zip(loaders["train"], range(count), strict=False)]


def _agreement(a: nn.Module, b: nn.Module, loader: DataLoader) -> float:
    same = total = 0
    with torch.no_grad():
        for x, _ in loader:
            same += int((a(x).argmax(1) == b(x).argmax(1)).sum())
            total += len(x)
    return same / total


def test_every_engine_is_available_here() -> None:
    assert [name for name, engine in ENGINES.items() if engine.unavailable() is None] == [
        "onnxruntime", "pt2e", "fx"]


@pytest.mark.parametrize("name", ENGINE_NAMES)
@pytest.mark.parametrize("calibration", ["mse", "minmax", "percentile"])
def test_int8_outputs_are_close_to_float(name: str, calibration: str, cnn: SmallCNN,
                                         loaders: dict[str, DataLoader]) -> None:
    settings = StaticSettings(calibration=calibration, reduce_range=True)
    built = ENGINES[name].prepare(cnn, _batches(loaders), settings).build()
    assert relative_error(cnn, built.module, next(iter(loaders["test"]))[0]) < 0.1
    assert _agreement(cnn, built.module, loaders["test"]) >= 0.97
    assert built.float_ops == []  # everything in this model has an int8 kernel


def test_the_fx_model_runs_int8_kernels_without_a_boundary_at_flatten(
        cnn: SmallCNN, loaders: dict[str, DataLoader]) -> None:
    built = ENGINES["fx"].prepare(cnn, _batches(loaders), StaticSettings()).build()
    modules = dict(built.module.named_modules())
    assert type(modules["features.0.0"]).__name__ == "ConvReLU2d"  # conv + bn + relu fused
    assert type(modules["classifier.3"]).__module__.startswith("torch.ao.nn.quantized")
    code = built.module.code
    assert code.count("quantize_per_tensor(") == 1 and code.count("dequantize()") == 1


def test_the_onnxruntime_model_is_a_qdq_int8_graph(cnn: SmallCNN,
                                                   loaders: dict[str, DataLoader]) -> None:
    import onnx

    built = ENGINES["onnxruntime"].prepare(cnn, _batches(loaders), StaticSettings()).build()
    assert isinstance(built.module, OrtModule)
    graph = onnx.load_from_string(built.module.onnx_bytes()).graph
    ops = [node.op_type for node in graph.node]
    assert "BatchNormalization" not in ops  # folded into the convolutions
    weights = {i.name: i.data_type for i in graph.initializer}
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    for node in graph.node:  # every conv's weight comes from an int8 initializer
        if node.op_type == "DequantizeLinear" and node.output[0] in conv_weights:
            assert weights[node.input[0]] == onnx.TensorProto.INT8


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_restore_rebuilds_the_structure_and_the_state_dict_loads_weights_only(
        name: str, cnn: SmallCNN, loaders: dict[str, DataLoader]) -> None:
    engine = ENGINES[name]
    settings = StaticSettings()
    built = engine.prepare(cnn, _batches(loaders), settings).build(["classifier.1"])
    buffer = io.BytesIO()
    torch.save(built.module.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = SmallCNN().eval()  # random weights: everything must come from the state dict
    restored = engine.restore(fresh, built.record, settings)
    restored.load_state_dict(state)
    x = next(iter(loaders["test"]))[0]
    with torch.no_grad():
        torch.testing.assert_close(restored(x), built.module(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_skipped_layers_stay_float(name: str, cnn: SmallCNN,
                                   loaders: dict[str, DataLoader]) -> None:
    prepared = ENGINES[name].prepare(cnn, _batches(loaders), StaticSettings())
    full, mixed = prepared.build(), prepared.build(["features.0.0", "classifier.3"])
    assert mixed.float_layers == ["classifier.3", "features.0.0"]
    if name == "fx":
        modules = dict(mixed.module.named_modules())
        assert type(modules["classifier.3"]) is nn.Linear
        assert type(modules["classifier.1"]).__module__.startswith("torch.ao.nn.intrinsic")
    assert {op.split(" ")[0] for op in mixed.float_ops} >= {"classifier.3", "features.0.0"}
    assert full.float_ops == []
    x = next(iter(loaders["test"]))[0]
    assert relative_error(cnn, mixed.module, x) < 0.1


class Wobble(nn.Module):
    """Data-dependent Python control flow: no tracer can capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > 0:
            return torch.nn.functional.softplus(x)
        return x


class Unusual(nn.Module):
    """A CNN with one layer FX cannot trace and one operator no int8 kernel runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.wobble = Wobble()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.erf(self.conv2(self.wobble(torch.relu(self.conv(x)))))
        return self.head(torch.flatten(x, 1))


def test_unquantizable_operators_stay_float_and_are_named(
        loaders: dict[str, DataLoader]) -> None:
    torch.manual_seed(0)
    model = Unusual().eval()
    batches = _batches(loaders, 2)
    fx = ENGINES["fx"].prepare(model, batches, StaticSettings()).build()
    assert "wobble (not traceable by FX)" in fx.float_ops
    assert any("erf" in op for op in fx.float_ops)
    assert relative_error(model, fx.module, batches[0]) < 0.1
    ort = ENGINES["onnxruntime"].prepare(model, batches, StaticSettings()).build()
    assert any("Erf" in op for op in ort.float_ops)
    assert relative_error(model, ort.module, batches[0]) < 0.1


def test_auto_choice_times_the_working_engines_and_reports_broken_ones(
        cnn: SmallCNN, loaders: dict[str, DataLoader]) -> None:
    batches = _batches(loaders, 2)
    engines = [ENGINES[name] for name in ENGINE_NAMES]  # auto with PT2E: test_static.py
    chosen, tried = choose_engine(engines, cnn, batches, StaticSettings(),
                                  timing_inputs={1: batches[0][:1], 8: batches[0][:8]},
                                  threads=1)
    assert chosen in tried and all(c.ok for c in tried)
    for candidate in tried:
        assert set(candidate.latency_ms) == {1, 8}
        assert "ms/sample at batch 8" in candidate.summary()

    class Broken:
        name, description = "broken", "always fails"

        def unavailable(self) -> str | None:
            return None

        def prepare(self, *args: object) -> object:
            raise RuntimeError("kernel missing")

    chosen, tried = choose_engine([Broken(), ENGINES["onnxruntime"]], cnn, batches,  # type: ignore[list-item]
                                  StaticSettings())
    assert chosen.engine.name == "onnxruntime"
    assert tried[0].summary() == "broken: RuntimeError: kernel missing"
    with pytest.raises(EngineError, match="no int8 engine could quantize"):
        choose_engine([Broken()], cnn, batches, StaticSettings())  # type: ignore[list-item]
