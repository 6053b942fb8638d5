"""The plugin registry: every hook is exercised here (test_hook_<name>), loading rules,
environment switches, and misbehaving plugins."""

from __future__ import annotations

import inspect
import logging
import sys
import types

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sconce
from sconce import hookspecs
from sconce.adapter import ClassifierAdapter
from sconce.api import get_adapter
from sconce.errors import UnknownNameError
from sconce.plugins import plugin_infos, registry

from conftest import TinyNet


def _plugin(name: str, **hooks: object) -> types.SimpleNamespace:
    marked = {key: sconce.hookimpl(value) for key, value in hooks.items()}
    plugin = types.SimpleNamespace(**marked)
    sconce.register_plugin(plugin, name=name)
    return plugin


class Halve(sconce.Technique):
    """Halve every weight (a visible, checkable change)."""

    name, kind, Config = "test.halve", "prune", sconce.PruneConfig

    def apply(self, model: nn.Module, config: sconce.PruneConfig, ctx: sconce.Context) -> nn.Module:
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(0.5)
        return model


# --- one test per hook ---------------------------------------------------------------------------
def test_hook_sconce_register_techniques() -> None:
    _plugin("halver", sconce_register_techniques=lambda register: register(Halve()))
    assert isinstance(sconce.get_technique("test.halve"), Halve)
    assert [t.name for t in sconce.list_techniques("test.*")] == ["test.halve"]
    with pytest.raises(UnknownNameError, match="did you mean 'test.halve'"):
        sconce.get_technique("test.halv")


class ModuleCount(sconce.Metric):
    name, label, unit, default = "module_count", "Modules", "", False

    def measure(self, model: nn.Module, ctx: sconce.Context) -> float:
        return float(len(list(model.modules())))


def test_hook_sconce_register_metrics() -> None:
    _plugin("counter", sconce_register_metrics=lambda register: register(ModuleCount()))
    values = sconce.measure(nn.Sequential(nn.Linear(2, 2), nn.ReLU()),
                            example_inputs=torch.randn(1, 2), metrics=["module_count"])
    assert values == {"module_count": 3.0}
    assert "module_count" not in sconce.measure(nn.Linear(2, 2), example_inputs=torch.randn(1, 2),
                                                metrics=None)


def test_hook_sconce_register_datasets(loaders) -> None:
    _plugin("blobs", sconce_register_datasets=lambda register: register(
        "blobs", lambda **options: sconce.Data.from_value(loaders)))
    data = sconce.get_data("blobs")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 4
    with pytest.raises(UnknownNameError, match="did you mean 'blobs'"):
        sconce.get_data("blob")


def test_hook_sconce_register_models() -> None:
    from sconce.api import build_model

    _plugin("tinies", sconce_register_models=lambda register: register(
        "tiny", lambda *, num_classes=4, **_: TinyNet(num_classes)))
    model = build_model("tiny", num_classes=3, in_channels=1, image_size=8)
    assert model.fc.out_features == 3
    assert "tiny" in registry().models


class DoubleAdapter(ClassifierAdapter):
    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs) * 2


def test_hook_sconce_model_adapter(loaders) -> None:
    special = TinyNet()
    special.wants_double = True  # type: ignore[attr-defined]
    _plugin("doubler", sconce_model_adapter=lambda model: DoubleAdapter()
            if getattr(model, "wants_double", False) else None)
    assert isinstance(get_adapter(special), DoubleAdapter)
    assert type(get_adapter(TinyNet())) is ClassifierAdapter


def test_hook_sconce_register_commands() -> None:
    from sconce.cli import build_cli

    def add(cli: click.Group) -> None:
        @cli.command("hello")
        def hello() -> None:
            click.echo("hello from a plugin")

    _plugin("greeter", sconce_register_commands=add)
    result = CliRunner().invoke(build_cli(), ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_hook_sconce_stage_finished(loaders) -> None:
    seen: list[tuple[str, float | None]] = []
    _plugin("halver", sconce_register_techniques=lambda register: register(Halve()))
    _plugin("observer", sconce_stage_finished=lambda stage, model, metrics: seen.append(
        (stage.title, metrics["params"])))
    sconce.compress(TinyNet(), loaders, recipe=["test.halve"], finetune_epochs=0,
                    metrics=["params"], progress=False)
    assert seen == [("Original", 116.0), ("Pruned", 116.0)]


def test_hook_sconce_module_footprint() -> None:
    class Packed(nn.Module):
        """Stores 8 int4 weights in 4 bytes that no parameter shows."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("packed", torch.zeros(4, dtype=torch.uint8))

    def footprint(module: nn.Module) -> sconce.Footprint | None:
        return sconce.Footprint(8, 8, 4) if isinstance(module, Packed) else None

    _plugin("packer", sconce_module_footprint=footprint)
    assert sconce.model_footprint(nn.Sequential(Packed(), nn.Linear(2, 1))) == \
        sconce.Footprint(8 + 3, 8 + 3, 4 + 12)


def test_hook_sconce_register_layer_rules() -> None:
    class Neuron(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.beta = nn.Parameter(torch.ones(channels, 1, 1))

    class LeakyNeuron(Neuron):
        pass

    rule = sconce.ChannelwiseLayer(per_channel=("beta",))
    _plugin("neurons", sconce_register_layer_rules=lambda register: register(Neuron, rule))
    assert registry().layer_rule(LeakyNeuron(3)) is rule
    assert registry().layer_rule(nn.ReLU()) is None
    with pytest.raises(TypeError, match="tuple of attribute names"):
        sconce.ChannelwiseLayer(per_channel="beta")  # type: ignore[arg-type]
    recurrent = sconce.ChannelwiseLayer(per_channel=("recurrent.bias",),
                                        recurrent=("recurrent.weight",))
    assert recurrent.recurrent == ("recurrent.weight",)
    with pytest.raises(TypeError, match="recurrent must be a tuple"):
        sconce.ChannelwiseLayer(recurrent="recurrent.weight")  # type: ignore[arg-type]


def test_a_layer_rule_that_is_not_a_channelwise_layer_is_skipped(caplog) -> None:
    _plugin("bad-rules", sconce_register_layer_rules=lambda register: register(nn.ReLU, "x"))
    with caplog.at_level(logging.WARNING):
        assert registry().layer_rule(nn.ReLU()) is None
    assert "use sconce.ChannelwiseLayer" in caplog.text


def test_every_hook_has_a_docstring_and_a_test() -> None:
    tests = {name for name in globals() if name.startswith("test_hook_")}
    for hook in hookspecs.HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
        assert "Called" in doc, f"{hook} must say when it is called"
        assert f"test_hook_{hook}" in tests, f"{hook} has no test_hook_{hook}"
    assert len(hookspecs.HOOK_NAMES) >= 8


# --- loading ---------------------------------------------------------------------------------------
def test_builtins_load_and_loading_is_idempotent() -> None:
    first = sconce.load_plugins()
    assert sconce.load_plugins() is first
    names = {info.name for info in plugin_infos()}
    assert {"sconce.builtin.metrics", "sconce.builtin.datasets", "sconce.builtin.models",
            "sconce.builtin.lowbit"} <= names
    assert {"digits", "fashion-mnist"} <= set(registry().datasets)
    assert {"demo", "demo-cnn", "vgg", "resnet18", "mobilenetv2", "vit"} <= set(registry().models)


def test_disable_autoload_keeps_builtins(monkeypatch) -> None:
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    infos = plugin_infos()
    assert all(info.distribution == "sconce-core" for info in infos)
    assert "accuracy" in registry().metrics


def test_sconce_plugins_selects_entry_points(monkeypatch) -> None:
    monkeypatch.setenv("SCONCE_PLUGINS", "no-such-plugin")
    assert all(info.distribution == "sconce-core" for info in plugin_infos())


def test_a_plugin_whose_registration_raises_is_skipped(caplog) -> None:
    def explode(register: object) -> None:
        raise RuntimeError("boom")

    _plugin("exploder", sconce_register_techniques=explode)
    _plugin("halver", sconce_register_techniques=lambda register: register(Halve()))
    with caplog.at_level(logging.WARNING, logger="sconce.plugins"):
        assert "test.halve" in registry().techniques
    assert "exploder" in caplog.text and "boom" in caplog.text


def test_a_duplicate_name_is_logged_and_the_first_kept(caplog) -> None:
    _plugin("first", sconce_register_techniques=lambda register: register(Halve()))
    _plugin("second", sconce_register_techniques=lambda register: register(Halve()))
    with caplog.at_level(logging.WARNING, logger="sconce.plugins"):
        techniques = registry().techniques
    assert "test.halve" in techniques
    assert registry().origin[("techniques", "test.halve")] == "first"
    assert "plugin 'second': its technique 'test.halve' is refused" in caplog.text


def test_unregister_plugin_removes_its_things() -> None:
    _plugin("halver", sconce_register_techniques=lambda register: register(Halve()))
    assert "test.halve" in registry().techniques
    sconce.unregister_plugin("halver")
    assert "test.halve" not in registry().techniques


def test_importing_the_core_loads_no_plugin() -> None:
    """Plugins load lazily: importing sconce (and its CLI module) imports none of them."""
    import os
    import subprocess

    code = ("import sys, sconce, sconce.cli, sconce.pipeline; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('sconce_'))))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCONCE_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == ""
