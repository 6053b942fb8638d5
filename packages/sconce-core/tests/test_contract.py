"""The technique contract and compress's options: registration checks, structural changes
without restore, typed records, option validation, recipe files, and the copies alive."""

from __future__ import annotations

import gc
import logging
import types
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import sconce
from sconce.errors import ConfigError, TechniqueError
from sconce.plugins import registry

FAST = {"metrics": ["params"], "progress": False, "device": "cpu", "finetune_epochs": 0}


class Tracked(nn.Module):
    """A model whose live copies the tests count."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _live() -> int:
    gc.collect()
    return sum(type(obj) is Tracked for obj in gc.get_objects())


def _register(*techniques: object, name: str = "contract") -> None:
    sconce.register_plugin(types.SimpleNamespace(sconce_register_techniques=sconce.hookimpl(
        lambda register: [register(t) for t in techniques])), name=name)


class Counting(sconce.Technique):
    """Count the model copies alive while it runs; use the teacher when asked to."""

    name, kind, Config = "test.counting", "prune", sconce.PruneConfig
    seen: ClassVar[list[tuple[int, bool]]] = []
    use_teacher: ClassVar[bool] = False

    def apply(self, model, config, ctx):
        if type(self).use_teacher:
            assert ctx.teacher is not None and not ctx.teacher.training
        type(self).seen.append((_live(), type(self).use_teacher))
        return model


class Swap(sconce.Technique):
    """Replace the hidden layer: a structural change without restore()."""

    name, kind, Config = "test.swap", "prune", sconce.PruneConfig

    def apply(self, model, config, ctx):
        model.body[1] = nn.Linear(64, 4)
        model.body[3] = nn.Linear(4, 4)
        return model


# --- memory: one working copy; the teacher only on demand ------------------------------------
def test_one_working_copy_and_the_teacher_only_while_a_stage_uses_it(loaders) -> None:
    Counting.seen = []
    _register(Counting())
    model = Tracked()
    baseline = _live()

    Counting.use_teacher = False
    sconce.compress(model, loaders, recipe=["test.counting"] * 2, **FAST)
    assert Counting.seen == [(baseline + 1, False)] * 2  # the caller's model + one copy

    Counting.seen, Counting.use_teacher = [], True
    sconce.compress(model, loaders, recipe=["test.counting"] * 2, **FAST)
    assert Counting.seen == [(baseline + 2, True)] * 2  # + the teacher, built per stage
    assert _live() == baseline  # nothing the run made outlives it but the result (dropped)


# --- the protocol ------------------------------------------------------------------------------
def test_a_structural_change_without_restore_is_refused_before_saving(loaders, tmp_path) -> None:
    _register(Swap())
    with pytest.raises(TechniqueError, match=r"test.swap.*changed the model's structure.*"
                                             r"body.1.weight: \(8, 64\) -> \(4, 64\).*restore"):
        sconce.compress(Tracked(), loaders, recipe=["test.swap"], out=tmp_path, **FAST)
    assert not (tmp_path / "work" / "stages" / "01-test-swap").exists()
    assert not (tmp_path / "model.pt").exists()


@dataclass
class NoDefaults(sconce.Config):
    needed: int


class Broken(sconce.Technique):
    name, kind, Config = "test.broken", "prune", sconce.PruneConfig

    def apply(self, model, config, ctx):
        return model


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "undotted"}, "must be dotted"),
    ({"kind": "squash"}, "has kind 'squash'"),
    ({"Config": dict}, "Config must be a dataclass subclassing sconce.Config"),
    ({"Config": NoDefaults}, "must build from its defaults"),
    ({"apply": lambda model: model}, "apply must take"),
    ({"restore": "not callable"}, "restore is not callable"),
])
def test_a_technique_breaking_the_protocol_is_refused_at_registration(change, message,
                                                                     caplog) -> None:
    bad = Broken()
    for key, value in change.items():
        setattr(bad, key, value)
    _register(bad, Counting())
    with caplog.at_level(logging.WARNING, logger="sconce.plugins"):
        techniques = registry().techniques
    assert "test.counting" in techniques  # the plugin's other technique stays
    assert "test.broken" not in techniques and "undotted" not in techniques
    assert message in caplog.text and "contract" in caplog.text


def test_list_techniques_gives_typed_records() -> None:
    class Restoring(Swap):
        name = "test.restoring"

        def restore(self, model, config, record):
            return model

    _register(Counting(), Restoring())
    infos = {info.name: info for info in sconce.list_techniques("test.*")}
    assert isinstance(infos["test.counting"], sconce.TechniqueInfo)
    counting = infos["test.counting"]
    assert (counting.kind, counting.plugin, counting.package) == ("prune", "contract", "(runtime)")
    assert counting.fields == (("sparsity", "float", 0.5),)
    assert counting.config is sconce.PruneConfig and not counting.restorable
    assert infos["test.restoring"].restorable
    assert counting.description.startswith("Count the model copies")


# --- compress options and recipe files --------------------------------------------------------
def test_an_unknown_option_is_one_line_with_the_closest_name(loaders) -> None:
    with pytest.raises(ConfigError, match=r"^compress\(\) has no option 'finetune_epoch'; "
                                          r"did you mean 'finetune_epochs'\?$"):
        sconce.compress(Tracked(), loaders, recipe=[], finetune_epoch=1)
    with pytest.raises(ConfigError, match="finetune_epochs must be a number"):
        sconce.compress(Tracked(), loaders, recipe=[], finetune_epochs="two")
    with pytest.raises(ConfigError, match="seed must be an integer"):
        sconce.compress(Tracked(), loaders, recipe=[], seed=1.5)
    assert sconce.CompressOptions.from_dict({"finetune_epochs": 2}).finetune_epochs == 2.0


def test_a_recipe_path_is_read_with_its_constraints_and_options(loaders, tmp_path) -> None:
    _register(Counting())
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[[stage]]\ntechnique = "test.counting"\nsparsity = 0.3\n\n'
                      '[constraints]\nmax_accuracy_drop = 0.5\n\n'
                      '[options]\nmetrics = ["params", "size"]\nseed = 3\n')
    result = sconce.compress(Tracked(), loaders, str(recipe), progress=False, device="cpu",
                             finetune_epochs=0)
    assert [s.technique for s in result.report.stages] == [None, "test.counting"]
    assert result.report.stages[1].config == {"sparsity": 0.3}
    assert result.report.run["seed"] == 3 and result.report.run["constraints"] == {
        "max_accuracy_drop": 0.5}
    assert {m.name for m in result.report.metrics} == {"params", "size"}
    overridden = sconce.compress(Tracked(), loaders, recipe, constraints={}, seed=5,
                                 progress=False, device="cpu", finetune_epochs=0)
    assert overridden.report.run["seed"] == 5 and "constraints" not in overridden.report.run
    recipe.write_text('[[stage]]\ntechnique = "test.counting"\n\n[options]\nfinetune_epoch = 1\n')
    with pytest.raises(ConfigError, match="did you mean 'finetune_epochs'"):
        sconce.compress(Tracked(), loaders, recipe)
