"""``quant.dynamic`` on both engines: attention encoders and recurrent nets, save/load, budget."""

from __future__ import annotations

import io

import pytest
import torch
from quant_helpers import Encoder, SmallCNN
from torch import nn

import sconce
from sconce.context import Context
from sconce.errors import ConfigError
from sconce_quant.dynamic import DynamicConfig, DynamicInt8, Pt2eDynamicEngine
from sconce_quant.engines import OrtModule, Pt2eModule


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.gru = nn.GRU(32, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(x)[0])[0][:, -1])


CASES = [(Encoder, lambda: torch.randint(0, 100, (4, 12))), (Recurrent,
                                                            lambda: torch.randn(4, 7, 16))]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("engine, factory, inputs", [
    *(("torch", *case) for case in CASES), *(("onnxruntime", *case) for case in CASES),
    ("pt2e", *CASES[0])])  # PT2E quantizes Linear only (compiled per shape: one case)
def test_dynamic_int8_is_close_and_restores(engine: str, factory: type[nn.Module],
                                            inputs: object) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    x = inputs()  # type: ignore[operator]
    ctx = Context.for_inputs(x)
    quantized = DynamicInt8().apply(model, DynamicConfig(engine=engine), ctx)
    with torch.no_grad():
        assert _relative(quantized(x), model(x)) < 0.05
    if engine == "torch":
        from torch.ao.nn.quantized.dynamic import GRU, LSTM, Linear

        kinds = {type(m) for m in quantized.modules()}
        assert Linear in kinds
        if factory is Recurrent:
            assert isinstance(quantized.lstm, LSTM) and isinstance(quantized.gru, GRU)
    elif engine == "onnxruntime":
        assert isinstance(quantized, OrtModule)
    else:
        assert isinstance(quantized, Pt2eModule)
        assert ctx.stage.notes["int8 engine"].startswith("pt2e (torchao PT2E")
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    buffer.seek(0)
    record = ctx.stage.restore_record
    assert record is not None and record["engine"] == engine
    fresh = factory().eval()  # other random weights: the state dict must bring them
    restored = DynamicInt8().restore(fresh, DynamicConfig(engine=engine), record)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), quantized(x), rtol=0, atol=0)


def test_auto_measures_the_dynamic_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    # PT2E compiles the encoder for every input shape auto tries (a minute and more here):
    # auto with PT2E among the engines is tested on a small CNN in test_static.py, and on
    # MiniLM by benchmarks/quant.py
    monkeypatch.setattr(Pt2eDynamicEngine, "unavailable", lambda self: "left out (test time)")
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randint(0, 100, (2, 12))
    ctx = Context.for_inputs(x, timing=sconce.TimingSettings(threads=1, rounds=1,
                                                             round_seconds=0.01,
                                                             warmup_seconds=0.01, batch_size=4))
    DynamicInt8().apply(model, DynamicConfig(), ctx)
    note = ctx.stage.notes["int8 engine"]
    assert "auto, measured: onnxruntime:" in note and "torch:" in note
    assert "pt2e: left out (test time)" in note


def test_dynamic_budget_keeps_the_sensitive_layer_float(cnn: SmallCNN,
                                                         data: sconce.Data) -> None:
    with torch.no_grad():  # a planted outlier unit: per-tensor int8 of classifier.1 loses it
        cnn.classifier[1].weight[0] *= 1000.0
        cnn.classifier[1].bias[0] *= 1000.0
        cnn.classifier[3].weight[:, 0] /= 1000.0
    config = DynamicConfig(engine="torch", per_channel=False)
    ctx = Context(data=data, teacher=cnn, constraints=sconce.Constraints(max_accuracy_drop=1.0))
    quantized = DynamicInt8().apply(cnn, config, ctx)
    assert "classifier.1" in ctx.stage.notes["kept in float (accuracy budget)"]
    assert ctx.evaluate(quantized).accuracy >= ctx.evaluate(cnn).accuracy - 1.0
    assert type(quantized.classifier[1]) is nn.Linear


def test_bad_dynamic_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="engine"):
        DynamicConfig(engine="fx")
    with pytest.raises(ConfigError, match="fp8"):
        DynamicConfig(engine="onnxruntime", dtype="fp8")
    with pytest.raises(ConfigError, match="layer_types"):
        DynamicConfig(layer_types=("Conv2d",))
