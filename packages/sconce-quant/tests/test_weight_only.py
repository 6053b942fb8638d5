"""``quant.weight_only``: RTN and GPTQ int4/int8, packed storage, tied weights, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.context import Context
from sconce.errors import ConfigError
from sconce_quant.gptq import GPTQSettings, gptq_quantize
from sconce_quant.modules import WeightOnlyLinear
from sconce_quant.qparams import rtn_group_codes
from sconce_quant.weight_only import WeightOnly, WeightOnlyConfig


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class TinyLM(nn.Module):
    """Embedding, a stack of MLP blocks, a head tied to the embedding."""

    def __init__(self, vocab: int = 64, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def _lm_ctx(seed: int = 0) -> tuple[TinyLM, Context]:
    torch.manual_seed(seed)
    model = TinyLM().eval()
    ids = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(TensorDataset(ids, ids[:, 0]), batch_size=16)
    data = sconce.Data(train=loader, test=loader, num_classes=64)
    return model, Context(data=data, progress=False)


def _error(model: nn.Module, reference: nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(ids) - reference(ids)).norm() / reference(ids).norm())


def test_gptq_beats_rtn_on_the_layer_objective() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated inputs, as real activations
    w = torch.randn(16, 64)
    h = 2 * x.t() @ x / len(x)
    for settings in (GPTQSettings(bits=4, group_size=16), GPTQSettings(bits=4, group_size=0),
                     GPTQSettings(bits=4, group_size=16, act_order=False),
                     GPTQSettings(bits=4, group_size=16, act_order=False, clip_search=False),
                     GPTQSettings(bits=4, group_size=16, clip_search=False),
                     GPTQSettings(bits=8, group_size=32, symmetric=True)):
        gptq = gptq_quantize(w, h, settings).dequantize()
        rtn = rtn_group_codes(w, settings.bits, settings.group_size,
                              symmetric=settings.symmetric,
                              search=settings.clip_search).dequantize()
        assert ((gptq - w) @ x.t()).norm() < 0.9 * ((rtn - w) @ x.t()).norm()


def test_gptq_codes_respect_the_format() -> None:
    torch.manual_seed(0)
    w, x = torch.randn(8, 40), torch.randn(100, 40)
    codes = gptq_quantize(w, 2 * x.t() @ x / 100, GPTQSettings(bits=4, group_size=16))
    assert codes.codes.dtype == torch.uint8 and int(codes.codes.max()) <= 15
    assert codes.scales.shape == (8, 3) and codes.scales.dtype == torch.float16
    layer = WeightOnlyLinear.from_codes(codes, None)
    torch.testing.assert_close(layer.dequantized_weight(), codes.dequantize())


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_int4_weight_only_on_a_tied_language_model(method: str) -> None:
    model, ctx = _lm_ctx()
    reference = TinyLM().eval()
    reference.load_state_dict(model.state_dict())
    quantized = WeightOnly().apply(model, WeightOnlyConfig(method=method, group_size=32), ctx)
    layers = [m for m in quantized.modules() if isinstance(m, WeightOnlyLinear)]
    assert len(layers) == 6 and all(layer.bits == 4 for layer in layers)
    assert type(quantized.head) is nn.Linear  # tied to the embedding: left alone
    assert ctx.stage.notes["left in float (weight shared with another module)"] == "head"
    assert "(GPTQ" in ctx.stage.notes["weight-only"] or method == "rtn"
    ids = torch.randint(0, 64, (4, 16))
    assert _error(quantized, reference, ids) < 0.15


def test_gptq_output_error_is_below_rtn_on_the_model() -> None:
    errors = {}
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(5))
    for method in ("rtn", "gptq"):
        model, ctx = _lm_ctx()
        reference = TinyLM().eval()
        reference.load_state_dict(model.state_dict())
        quantized = WeightOnly().apply(model, WeightOnlyConfig(method=method, group_size=32), ctx)
        errors[method] = _error(quantized, reference, ids)
    assert errors["gptq"] < errors["rtn"]


def test_weight_only_saves_and_loads_through_the_core(tmp_path: Path) -> None:
    model, ctx = _lm_ctx()
    assert ctx.data is not None
    result = sconce.compress(model, ctx.data, recipe=[("quant.weight_only", {"bits": 4})],
                             finetune_epochs=0, out=tmp_path, metrics=["params", "size"],
                             progress=False)
    original, quantized = result.report.stages
    # the blocks' weights shrink ~8x; the tied embedding/head stays float32
    assert quantized.values["size"] < 0.6 * original.values["size"]
    loaded = sconce.load(tmp_path, model=TinyLM())
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), result.model(ids), rtol=0, atol=0)
    assert loaded.layers[0].up.qweight.dtype == torch.uint8


def test_int8_weight_only_is_nearly_exact() -> None:
    model, ctx = _lm_ctx()
    reference = TinyLM().eval()
    reference.load_state_dict(model.state_dict())
    quantized = WeightOnly().apply(model, WeightOnlyConfig(bits=8, method="rtn", group_size=0,
                                                           symmetric=True), ctx)
    assert _error(quantized, reference, torch.randint(0, 64, (4, 16))) < 0.01


@pytest.mark.parametrize("field, value", [("bits", 2), ("method", "awq"), ("group_size", -1),
                                          ("damp", 0.0)])
def test_bad_weight_only_settings_are_config_errors(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        WeightOnlyConfig.from_dict({field: value})


def test_clip_search_defaults_to_gptq_only() -> None:
    assert WeightOnlyConfig().searches() and WeightOnlyConfig().gptq().clip_search
    assert not WeightOnlyConfig(method="rtn").searches()
    assert WeightOnlyConfig(method="rtn", clip_search=True).searches()
    assert not WeightOnlyConfig(clip_search=False).gptq().clip_search


def test_act_order_with_uncorrelated_inputs_is_round_to_nearest() -> None:
    # a diagonal Hessian spreads no error, so GPTQ must give RTN's codes, in RTN's column
    # order, even though act_order visits the columns in a shuffled order
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    h = torch.diag(torch.rand(32) + 0.1)
    for search in (False, True):
        codes = gptq_quantize(w, h, GPTQSettings(bits=4, group_size=8, act_order=True,
                                                 clip_search=search))
        rtn = rtn_group_codes(w, 4, 8, symmetric=False, search=search)
        assert torch.equal(codes.codes, rtn.codes)
        assert torch.equal(codes.scales, rtn.scales) and torch.equal(codes.zeros, rtn.zeros)
