"""Configs, recipes, constraints and the error messages users see."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sconce.config import Config, PruneConfig, QuantizeConfig, describe_fields
from sconce.errors import ConfigError, UnknownNameError
from sconce.recipe import Constraints, Recipe, Stage, Target


@dataclass
class StepsConfig(PruneConfig):
    steps: int = 3
    layers: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


def test_config_round_trips_through_dict() -> None:
    config = StepsConfig(sparsity=0.8, steps=5, layers=("a", "b"))
    assert config.to_dict() == {"sparsity": 0.8, "steps": 5, "layers": ["a", "b"]}
    assert StepsConfig.from_dict(config.to_dict()) == config


def test_config_coerces_toml_values() -> None:
    assert StepsConfig.from_dict({"sparsity": 0, "layers": ["x"]}) == StepsConfig(0.0, 3, ("x",))


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, "half", True])
def test_sparsity_outside_unit_interval_is_rejected(sparsity: object) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        PruneConfig(sparsity=sparsity)  # type: ignore[arg-type]


def test_unknown_config_field_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        StepsConfig.from_dict({"sparsty": 0.5})


def test_subclass_validation_runs() -> None:
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        StepsConfig(steps=0)


def test_bits_must_be_supported() -> None:
    with pytest.raises(ConfigError, match="bits"):
        QuantizeConfig(bits=5)


def test_describe_fields_lists_defaults() -> None:
    assert describe_fields(StepsConfig)[:2] == [("sparsity", "float", 0.5), ("steps", "int", 3)]
    assert describe_fields(Config) == []


def test_unknown_name_error_lists_close_matches() -> None:
    error = UnknownNameError("technique", "prune.gmq", ["prune.gmp", "quant.int8"])
    assert str(error) == "unknown technique 'prune.gmq'; did you mean 'prune.gmp'?"
    far = UnknownNameError("technique", "zzz", ["prune.gmp"])
    assert "known: prune.gmp" in str(far)


def test_recipe_from_python_values() -> None:
    recipe = Recipe.from_value(["prune.gmp", ("quant.int8", {"bits": 8}), Stage("x.y")])
    assert [s.technique for s in recipe.stages] == ["prune.gmp", "quant.int8", "x.y"]
    assert recipe.stages[1].config_dict() == {"bits": 8}
    with pytest.raises(ConfigError):
        Recipe.from_value([42])


def test_recipe_from_toml(tmp_path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(
        '[[stage]]\ntechnique = "prune.gmp"\nsparsity = 0.8\n\n'
        '[[stage]]\ntechnique = "quant.int8"\nlabel = "int8"\n\n'
        '[constraints]\nmax_accuracy_drop = 1\ntarget_size_mib = "4x"\n\n'
        '[options]\nfinetune_epochs = 2\n'
    )
    recipe, constraints, options = Recipe.from_toml(path)
    assert recipe.stages[0] == Stage("prune.gmp", {"sparsity": 0.8})
    assert recipe.stages[1].label == "int8"
    assert constraints == Constraints(max_accuracy_drop=1.0, target_size_mib=Target(4.0, True))
    assert options == {"finetune_epochs": 2}


def test_recipe_toml_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[stage]]\nsparsity = 0.5\n")
    with pytest.raises(ConfigError, match="has no 'technique"):
        Recipe.from_toml(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[stage]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Recipe.from_toml(broken)


def test_targets_parse_ratios_and_units() -> None:
    assert Target.parse("2x").limit(10.0) == 5.0
    assert Target.parse("3ms").limit(10.0) == 3.0
    assert Target.parse("5M").value == 5e6
    assert Target.parse(1.5).limit(10.0) == 1.5
    for bad in ("fast", -1, "0x"):
        with pytest.raises(ConfigError):
            Target.parse(bad)


def test_constraints_reject_unknown_keys_and_negative_drop() -> None:
    with pytest.raises(ConfigError, match="unknown constraint"):
        Constraints.from_value({"max_acc_drop": 1})
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        Constraints(max_accuracy_drop=-1)
    assert Constraints().is_empty()
    assert Constraints.from_value({"target_latency": "2x"}).to_dict() == {"target_latency": "2x"}
