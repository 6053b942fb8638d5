"""prune.gmp and prune.magnitude: schedule, exact sparsity, plain modules, coverage."""

from __future__ import annotations

import copy
from itertools import pairwise

import pytest
import torch
from torch import nn

import sconce
from sconce import Context
from sconce_prune.config import GMPConfig, MagnitudeConfig
from sconce_prune.gmp import GradualMagnitudePruning
from sconce_prune.magnitude import MagnitudePruning
from sconce_prune.schedule import CubicSchedule
from sconce_prune.targets import find_targets, select_targets


def _ctx(data, epochs: float = 1.0, teacher: nn.Module | None = None) -> Context:
    return Context(data=data, finetune_epochs=epochs, progress=False, teacher=teacher)


def _pruned_zeros(model: nn.Module, skip=None) -> tuple[int, int]:
    kept, _ = select_targets(find_targets(model), skip)
    return (sum(int((t.weight == 0).sum()) for t in kept), sum(t.numel for t in kept))


def test_cubic_schedule_rises_monotonically_and_ends_exactly_on_target() -> None:
    schedule = CubicSchedule(initial=0.1, final=0.87, start=0.1, end=0.7, steps=7)
    values = [schedule.sparsity_at(step, 300) for step in range(301)]
    assert values[0] == 0.1 and values[-1] == 0.87
    assert all(b >= a for a, b in pairwise(values))
    assert values[schedule.pruning_steps(300)[-1]] == 0.87
    increments = [b - a for a, b in pairwise(values[30:212])]
    assert increments[0] > increments[-1]  # fast first, slow at the end


@pytest.mark.parametrize("allocation", ["auto", "uniform", "global"])
def test_gmp_hits_the_target_sparsity_exactly_at_the_end(trained, data, allocation) -> None:
    config = GMPConfig(sparsity=0.7, allocation=allocation, pruning_steps=4,
                       sensitivity_samples=64, sensitivity_ratios=(0.5, 0.8, 0.95))
    technique = GradualMagnitudePruning()
    seen: list[float] = []

    class Spy(sconce.TrainCallback):
        def on_step_end(self, state):
            seen.append(_pruned_zeros(state.model)[0])

    ctx = _ctx(data, epochs=1)
    original_finetune = ctx.finetune

    def finetune(model, epochs=None, teacher=None, callbacks=(), **options):
        return original_finetune(model, epochs, teacher, [*callbacks, Spy()], **options)

    ctx.finetune = finetune  # type: ignore[method-assign]
    model = technique.apply(copy.deepcopy(trained), config, ctx)
    zeros, total = _pruned_zeros(model)
    assert zeros == round(0.7 * total)
    assert seen[0] < seen[-1] == zeros  # sparsity grew during fine-tuning
    assert all(b >= a for a, b in pairwise(seen))
    assert "per-layer ratios" in ctx.stage.notes or allocation != "auto"


def test_gmp_leaves_a_plain_module(trained, data) -> None:
    before = copy.deepcopy(trained)
    keys = list(before.state_dict())
    model = GradualMagnitudePruning().apply(trained, GMPConfig(sparsity=0.6,
                                            allocation="uniform"), _ctx(data, 0.5))
    assert list(model.state_dict()) == keys
    assert type(model) is type(before)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
        assert not torch.nn.utils.parametrize.is_parametrized(module)
    for param in model.parameters():
        assert type(param) is nn.Parameter
        assert not getattr(param, "_backward_hooks", None)


def test_gmp_without_budget_prunes_in_one_shot(trained, data) -> None:
    ctx = _ctx(data, epochs=0)
    model = GradualMagnitudePruning().apply(trained, GMPConfig(sparsity=0.5,
                                            allocation="global"), ctx)
    zeros, total = _pruned_zeros(model)
    assert zeros == round(0.5 * total)
    assert "one shot" in ctx.stage.notes["schedule"]


def test_auto_ratios_differ_per_layer_and_meet_the_target(trained, data) -> None:
    ctx = _ctx(data, epochs=0)
    config = MagnitudeConfig(sparsity=0.8, allocation="auto", sensitivity_samples=128,
                             sensitivity_ratios=(0.5, 0.8, 0.95))
    model = MagnitudePruning().apply(trained, config, ctx)
    ratios = ctx.stage.notes["per-layer ratios"]
    zeros, total = _pruned_zeros(model)
    assert zeros == round(0.8 * total)
    assert len(set(ratios.values())) > 1 or "uniform" in ctx.stage.notes["allocation"]
    assert ctx.stage.artifacts and ctx.stage.artifacts[0].stat().st_size > 1000
    assert ctx.stage.notes["allocation"].startswith("auto: ")


def test_accuracy_budget_finds_a_sparsity_within_it(trained, data) -> None:
    ctx = _ctx(data, epochs=0)
    config = MagnitudeConfig(allocation="auto", max_accuracy_drop=2.0, sensitivity_samples=128,
                             sensitivity_ratios=(0.5, 0.8, 0.95))
    base = ctx.evaluate(trained, max_samples=128).accuracy
    model = MagnitudePruning().apply(trained, config, ctx)
    after = ctx.evaluate(model, max_samples=128).accuracy
    zeros, _ = _pruned_zeros(model)
    assert zeros > 0
    assert base - after <= 2.0
    assert "sparsity found" in ctx.stage.notes


def test_the_runs_accuracy_budget_reaches_the_allocation(trained, data) -> None:
    """The run's max_accuracy_drop means points lost against the original (the teacher): a
    stage whose input already lost some has only the rest."""
    limits = sconce.Constraints(max_accuracy_drop=2.0)
    config = MagnitudeConfig(allocation="auto", sensitivity_samples=128,
                             sensitivity_ratios=(0.5, 0.8, 0.95))
    ctx = Context(data=data, finetune_epochs=0, progress=False, constraints=limits,
                  teacher=trained)
    base = ctx.evaluate(trained, max_samples=128).accuracy
    model = MagnitudePruning().apply(copy.deepcopy(trained), config, ctx)
    assert base - ctx.evaluate(model, max_samples=128).accuracy <= 2.0
    assert "the run's max_accuracy_drop" in ctx.stage.notes["sparsity found"]
    damaged = copy.deepcopy(trained)
    with torch.no_grad():
        for target in find_targets(damaged):
            target.weight.mul_(torch.rand_like(target.weight) > 0.5)
    spent = base - ctx.evaluate(damaged, max_samples=128).accuracy
    assert spent > 0
    left = ctx.accuracy_budget(damaged, max_samples=128)
    assert left == pytest.approx(max(0.0, 2.0 - spent))
    assert ctx.accuracy_budget(damaged, own=0.5) == 0.5  # a stage's own budget counts from it


def test_every_layer_kind_is_covered() -> None:
    class Zoo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 16)
            self.c1 = nn.Conv1d(16, 16, 3)
            self.c2 = nn.Conv2d(4, 8, 3)
            self.c3 = nn.Conv3d(4, 8, 3)
            self.t2 = nn.ConvTranspose2d(8, 4, 3)
            self.attn = nn.MultiheadAttention(16, 2)
            self.kv = nn.MultiheadAttention(16, 2, kdim=8, vdim=8)
            self.head = nn.Linear(16, 3)

    zoo = Zoo()
    names = [t.name for t in find_targets(zoo)]
    assert names == ["embed", "c1", "c2", "c3", "t2", "attn.in_proj_weight", "attn.out_proj",
                     "kv.q_proj_weight", "kv.k_proj_weight", "kv.v_proj_weight",
                     "kv.out_proj", "head"]
    ctx = Context.for_inputs(torch.zeros(1, 1))
    MagnitudePruning().apply(zoo, MagnitudeConfig(sparsity=0.5, skip_layers=()), ctx)
    for target in find_targets(zoo):
        assert int((target.weight == 0).sum()) == round(0.5 * target.numel), target.name


def test_attention_still_runs_after_pruning() -> None:
    attn = nn.MultiheadAttention(16, 2, batch_first=True)
    model = nn.Sequential()
    model.add_module("attn", attn)
    ctx = Context.for_inputs(torch.zeros(1, 1))
    MagnitudePruning().apply(model, MagnitudeConfig(sparsity=0.9, skip_layers=()), ctx)
    assert (attn.in_proj_weight == 0).float().mean() == pytest.approx(0.9, abs=1e-3)
    out, _ = attn(torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16))
    assert torch.isfinite(out).all()


def test_default_skip_is_first_and_last_and_configurable(model) -> None:
    targets = find_targets(model)
    kept, skipped = select_targets(targets, None)
    assert [t.name for t in skipped] == [targets[0].name, targets[-1].name]
    kept, skipped = select_targets(targets, ["classifier"])
    assert {t.name for t in skipped} == {"classifier.1", "classifier.3"}
    kept, skipped = select_targets(targets, ["features.*"])
    assert all(t.name.startswith("classifier") for t in kept)
    kept, skipped = select_targets(targets, [])
    assert not skipped
