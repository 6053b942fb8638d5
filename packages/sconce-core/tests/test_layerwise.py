"""The layer-wise calibration driver: exact statistics, sequential propagation, blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sconce.errors import ConfigError, DataError
from sconce.layerwise import LayerInputs, find_blocks, input_rows, run_layerwise


def _hessian(rows: torch.Tensor) -> torch.Tensor:
    return 2.0 / rows.shape[0] * rows.t() @ rows


def test_linear_hessian_is_exact_over_several_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    batches = [torch.randn(7, 5), torch.randn(2, 4, 5), torch.randn(1, 5)]
    seen: dict[str, LayerInputs] = {}
    run_layerwise(model, batches, lambda layer: seen.setdefault(layer.name, layer))
    rows = torch.cat([b.reshape(-1, 5) for b in batches])
    assert seen["0"].count == rows.shape[0] == 16
    torch.testing.assert_close(seen["0"].hessian, _hessian(rows), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["0"].feature_sq_norms, (rows**2).sum(0), rtol=1e-5,
                               atol=1e-5)


def test_conv_hessian_uses_unfolded_patches_in_weight_order() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2, bias=False)
    x = torch.randn(2, 2, 6, 6)
    seen: list[LayerInputs] = []
    run_layerwise(nn.Sequential(conv), [x], seen.append)
    rows = input_rows(conv, x)
    torch.testing.assert_close(seen[0].hessian, _hessian(rows), rtol=1e-5, atol=1e-6)
    # the patch order matches weight.flatten(1): rows @ W^T reproduces the convolution
    out = (rows @ conv.weight.detach().flatten(1).t()).reshape(2, 9, 3).transpose(1, 2)
    torch.testing.assert_close(out.reshape(2, 3, 3, 3), conv(x).detach(), rtol=1e-4, atol=1e-5)


def test_later_layers_see_the_compressed_earlier_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    def zero_first(layer: LayerInputs) -> LayerInputs:
        if layer.name == "0":
            layer.set_weight_matrix(torch.zeros_like(layer.weight_matrix()))
            with torch.no_grad():
                layer.module.bias.fill_(1.0)
        return layer

    results = run_layerwise(model, [torch.randn(8, 4) for _ in range(3)], zero_first)
    assert list(results) == ["0", "2"]
    # layer 2 saw ReLU(0 * x + 1) = 1 everywhere: H = 2 * ones
    torch.testing.assert_close(results["2"].hessian, torch.full((6, 6), 2.0))


def test_targets_limit_the_layers_and_unknown_names_are_errors() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    results = run_layerwise(model, [torch.randn(2, 4)], lambda layer: layer.name, targets=["1"])
    assert results == {"1": "1"}
    with pytest.raises(ConfigError, match="not in the model"):
        run_layerwise(model, [torch.randn(2, 4)], lambda layer: None, targets=["fc"])
    with pytest.raises(ConfigError, match="supports Linear"):
        run_layerwise(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), [torch.randn(1, 2, 4, 4)],
                      lambda layer: None, targets=["0"])


def test_empty_calibration_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no calibration batches"):
        run_layerwise(nn.Linear(2, 2), [], lambda layer: None)


class Block(nn.Module):
    """A residual MLP block called with a keyword argument, like a transformer layer."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (x + self.down(F.relu(self.up(x))) * scale,)


class Stack(nn.Module):
    def __init__(self, width: int = 4, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(width, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        scale = torch.tensor(0.5)
        for layer in self.layers:
            h = layer(h, scale=scale)[0]
        return self.head(h)


def _reference_hessians(model: Stack, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hessians measured by hooks on a plain forward of the model as it is."""
    rows: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: rows.setdefault(name, []).append(
                    args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for handle in handles:
        handle.remove()
    return {name: _hessian(torch.cat(parts)) for name, parts in rows.items()}


@pytest.mark.parametrize("sequential", [True, False])
def test_block_mode_matches_a_plain_forward_of_the_compressed_model(sequential: bool) -> None:
    torch.manual_seed(0)
    model = Stack()
    batches = [torch.randn(3, 5, 4) for _ in range(2)]
    assert find_blocks(model, ["layers.0.up", "layers.2.down", "head"]) == [
        "layers.0", "layers.1", "layers.2"]

    order: list[str] = []
    seen: dict[str, torch.Tensor] = {}

    def halve(layer: LayerInputs) -> None:
        order.append(layer.name)
        seen[layer.name] = layer.hessian.clone()
        layer.set_weight_matrix(layer.weight_matrix().round())  # a crude "quantizer"

    run_layerwise(model, batches, halve, sequential=sequential)
    assert order == ["embed", "layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down",
                     "layers.2.up", "layers.2.down", "head"]
    # every layer's statistics are those of the final (compressed) model, except that with
    # sequential=False a block's layers are measured before any of that block is solved
    final = _reference_hessians(model, batches)
    for name in ("embed", "layers.0.up", "layers.1.up", "layers.2.up", "head"):
        torch.testing.assert_close(seen[name], final[name], rtol=1e-4, atol=1e-5)
    if sequential:
        torch.testing.assert_close(seen["layers.1.down"], final["layers.1.down"], rtol=1e-4,
                                   atol=1e-5)
    else:
        assert not torch.allclose(seen["layers.1.down"], final["layers.1.down"])


def test_blocks_that_do_not_chain_fall_back_to_layer_by_layer() -> None:
    class Parallel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.branches = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.branches[0](x) + self.branches[1](x)

    torch.manual_seed(0)
    model = Parallel()
    x = torch.randn(6, 3)
    results = run_layerwise(model, [x], lambda layer: layer.hessian)
    for name in ("branches.0", "branches.1"):
        torch.testing.assert_close(results[name], _hessian(x), rtol=1e-5, atol=1e-6)


def test_the_model_mode_is_restored() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    run_layerwise(model, [torch.randn(4, 2)], lambda layer: None)
    assert model.training


class Attention(nn.Module):
    """q, k and v read the same tensor; o reads their combination."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x)
        return x + self.o(torch.sigmoid(self.q(h)) * self.k(h) + self.v(h))


class AttentionStack(nn.Module):
    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Attention() for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("blocks", ["auto", None])
def test_layers_reading_one_input_share_one_capture_and_one_hessian(blocks: str | None) -> None:
    torch.manual_seed(0)
    batches = [torch.randn(3, 5, 4) for _ in range(2)]
    runs: dict[bool, int] = {}
    seen: dict[bool, dict[str, LayerInputs]] = {}
    for share in (True, False):
        torch.manual_seed(1)
        model = AttentionStack()
        count = [0]
        model.layers[1].q.register_forward_pre_hook(lambda m, a: count.__setitem__(0, count[0] + 1))
        seen[share] = {}

        def solve(layer: LayerInputs, share: bool = share) -> None:
            seen[share][layer.name] = layer
            layer.set_weight_matrix(layer.weight_matrix().round())

        run_layerwise(model, batches, solve, blocks=blocks, share_inputs=share)
        runs[share] = count[0]
    shared, apart = seen[True], seen[False]
    assert list(shared) == list(apart)
    for name in shared:  # the statistics are exactly those measured layer by layer
        torch.testing.assert_close(shared[name].hessian, apart[name].hessian, rtol=0, atol=0)
    assert shared["layers.0.q"].hessian is shared["layers.0.v"].hessian
    assert shared["layers.0.o"].hessian is not shared["layers.0.q"].hessian
    assert runs[True] < runs[False]  # k and v are measured without running the model again


def test_nan_or_inf_calibration_inputs_name_the_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].bias.fill_(float("inf"))
    with pytest.raises(DataError, match=r"layer '2' hold NaN or Inf"):
        run_layerwise(model, [torch.randn(4, 3)], lambda layer: None)
    grouped = AttentionStack(depth=2)
    batch = torch.randn(2, 3, 4)
    batch[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match=r"'layers.0.q' / 'layers.0.k' / 'layers.0.v'"):
        run_layerwise(grouped, [batch], lambda layer: None)


def test_diagonal_statistics_are_the_hessian_diagonal() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    batches = [torch.randn(6, 5), torch.randn(3, 5)]
    full = run_layerwise(model, batches, lambda layer: layer.hessian.clone())
    diagonal = run_layerwise(model, batches, lambda layer: layer.hessian.clone(),
                             statistics="diagonal")
    for name in full:
        torch.testing.assert_close(diagonal[name], torch.diag(torch.diagonal(full[name])))
    with pytest.raises(ConfigError, match="statistics must be one of"):
        run_layerwise(model, batches, lambda layer: None, statistics="full")
