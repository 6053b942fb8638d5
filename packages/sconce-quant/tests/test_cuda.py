"""``quant.dynamic`` on a CUDA model: torchao's int8 and float8 kernels, the same API as on
CPU; close to float, restores exactly. Skipped without a GPU."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from sconce.context import Context
from sconce_quant.dynamic import DynamicConfig, DynamicInt8
from sconce_quant.engines.cuda import TorchaoCudaEngine

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256),
                         nn.GELU(), nn.Linear(256, 16)).cuda().eval()


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_torchao_dynamic_on_cuda_is_close_and_restores(dtype: str) -> None:
    if TorchaoCudaEngine(dtype).unavailable() is not None:
        pytest.skip(TorchaoCudaEngine(dtype).unavailable())
    model = _mlp()
    x = torch.randn(64, 256, device="cuda")
    ctx = Context.for_inputs(x, device="cuda")
    quantized = DynamicInt8().apply(model, DynamicConfig(dtype=dtype), ctx)
    assert ctx.stage.notes["int8 engine"].startswith("torchao")
    assert next(quantized.parameters()).device.type == "cuda"
    with torch.no_grad():
        reference, result = model(x), quantized(x)
    assert float((result - reference).norm() / reference.norm()) < 0.05
    assert type(quantized[0].weight).__name__ != "Parameter"  # a torchao quantized tensor
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    buffer.seek(0)
    record = ctx.stage.restore_record
    assert record is not None and record["engine"] == "torchao" and record["dtype"] == dtype
    fresh = _mlp()
    with torch.no_grad():
        for p in fresh.parameters():
            p.mul_(0.5)  # other weights: the state dict must bring the quantized ones
    restored = DynamicInt8().restore(fresh, DynamicConfig(dtype=dtype), record)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), result, rtol=0, atol=0)
