"""torch.ao's FX and eager quantization are deprecated upstream: with them gone, ``quant.int8``
and ``quant.dynamic`` still quantize (ONNX Runtime and PT2E), and say why torch.ao was not
used."""

from __future__ import annotations

import sys

import pytest
import torch
from quant_helpers import Encoder, SmallCNN

import sconce
from sconce.context import Context
from sconce_quant.dynamic import DynamicConfig, DynamicInt8
from sconce_quant.engines import ENGINES
from sconce_quant.static import Int8Config, StaticInt8


@pytest.fixture
def without_torch_ao(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch as it will be: no FX quantization flow, no eager ``quantize_dynamic``."""
    for name in ("torch.ao.quantization.quantize_fx", "torch.ao.quantization.fx"):
        monkeypatch.setitem(sys.modules, name, None)  # importing them now fails
    monkeypatch.delattr("torch.ao.quantization.quantize_dynamic")


def test_static_int8_quantizes_without_fx(without_torch_ao: None, cnn: SmallCNN,
                                          ctx: Context) -> None:
    assert "not available" in (ENGINES["fx"].unavailable() or "")
    quantized = StaticInt8().apply(cnn, Int8Config(), ctx)
    note = ctx.stage.notes["int8 engine"]
    assert note.startswith(("onnxruntime", "pt2e"))
    assert "fx: torch.ao.quantization FX is not available" in note
    x = ctx.example_inputs(8)
    with torch.no_grad():
        assert (quantized(x).argmax(1) == cnn(x).argmax(1)).float().mean() >= 0.95


def test_dynamic_int8_quantizes_without_torch_ao(without_torch_ao: None) -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randint(0, 100, (2, 12))
    ctx = Context.for_inputs(x, timing=sconce.TimingSettings(threads=1, rounds=1,
                                                             round_seconds=0.01,
                                                             warmup_seconds=0.01, batch_size=4))
    quantized = DynamicInt8().apply(model, DynamicConfig(), ctx)
    note = ctx.stage.notes["int8 engine"]
    assert note.startswith(("onnxruntime", "pt2e"))
    assert "torch: torch.ao.quantization is not available" in note
    with torch.no_grad():
        reference = model(x)
        assert float((quantized(x) - reference).norm() / reference.norm()) < 0.05
