"""snn.state_quant: snnTorch's uniform levels, computed in closed form, restored on load."""

from __future__ import annotations

import snntorch as snn
import torch
from snntorch.functional import quant

import sconce
from sconce_snn.activity import profile_activity
from sconce_snn.state_quant import StateQuantizer


def test_levels_are_snntorchs_uniform_state_quant() -> None:
    torch.manual_seed(0)
    states = 3 * torch.randn(20_000)
    for bits in (2, 4, 8):
        ours = StateQuantizer(bits=bits, threshold=1.5, lower_limit=0.1, upper_limit=0.2)
        theirs = quant.state_quant(num_bits=bits, uniform=True, threshold=1.5,
                                   lower_limit=0.1, upper_limit=0.2)
        differ = (ours(states) - theirs(states)).abs() > 1e-5
        assert int(differ.sum()) <= 2  # only exact ties between two levels may round apart
        assert len(ours(states).round(decimals=4).unique()) <= 2**bits


def test_gradients_pass_straight_through() -> None:
    states = torch.randn(10, requires_grad=True)
    StateQuantizer(bits=4, threshold=1.0)(states).sum().backward()
    assert torch.equal(states.grad, torch.ones(10))


def test_an_snn_with_quantized_states_is_fine_tuned_and_reloads(trained_snn, data,
                                                                tmp_path) -> None:
    result = sconce.compress(trained_snn, data, recipe=[("snn.state_quant", {"bits": 4})],
                             progress=False, finetune_epochs=1, out=tmp_path,
                             metrics=["accuracy"])
    original, quantized = result.report.stages
    assert quantized.notes["fine-tuned"].startswith("1 epoch")
    neurons = [m for m in result.model.modules() if isinstance(m, snn.Leaky)]
    assert all(isinstance(n.state_quant, StateQuantizer) and n.state_quant.bits == 4
               for n in neurons)
    assert quantized.values["accuracy"] >= original.values["accuracy"] - 10
    loaded = sconce.load(tmp_path, model=type(trained_snn)())
    x = next(iter(data.test))[0]
    adapter = sconce.get_adapter(loaded)
    assert profile_activity(loaded, x, adapter).state_bits == {"lif1": 4, "lif2": 4}
    assert torch.equal(adapter.forward(loaded, x).membrane,
                       adapter.forward(result.model, x).membrane)
