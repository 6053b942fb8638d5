"""The original README's attribute-style API on top of the new pipeline."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import sconce as sconce_package
from sconce import sconce
from sconce.errors import ConfigError, ModelError, UnknownNameError

from conftest import TinyNet


class FakeGmp(sconce_package.Technique):
    """Stands in for sconce-prune's prune.gmp so the mapping can be tested in the core."""

    name, kind, Config = "prune.gmp", "prune", sconce_package.PruneConfig

    def apply(self, model, config, ctx):
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.mul_(param.abs() > param.abs().median())
        return model


def _configured(loaders) -> sconce:
    sconces = sconce()
    sconces.model = TinyNet()
    sconces.criterion = nn.CrossEntropyLoss()
    sconces.optimizer = torch.optim.Adam(sconces.model.parameters(), lr=1e-2)
    sconces.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(sconces.optimizer, T_max=200)
    sconces.dataloader = loaders
    sconces.epochs = 3
    sconces.device = torch.device("cpu")
    sconces.experiment_name = "tiny-gmp"
    sconces.progress = False
    return sconces


def test_prune_mode_maps_onto_techniques() -> None:
    sconces = sconce()
    for mode, name in [("GMP", "prune.gmp"), ("gmp", "prune.gmp"), ("CWP", "prune.channel"),
                       ("sparseGPT", "prune.sparsegpt"), ("OBC", "prune.obc")]:
        sconces.prune_mode = mode
        assert sconces.technique_for_prune_mode() == name
    sconces.prune_mode = "none"
    assert sconces.technique_for_prune_mode() is None
    sconces.prune_mode = "GMQ"
    with pytest.raises(UnknownNameError, match="did you mean 'GMP'"):
        sconces.technique_for_prune_mode()


def test_uninstalled_prune_mode_names_the_plugin(monkeypatch) -> None:
    from sconce.plugins import reset_plugins

    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_plugins()
    sconces = sconce()
    sconces.prune_mode = "CWP"
    with pytest.raises(UnknownNameError, match="pip install sconce-prune"):
        sconces.recipe()


def test_the_quickstart_flow(loaders, capsys, monkeypatch, tmp_path) -> None:
    from sconce.plugins import reset_plugins

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_plugins()
    sconce_package.register_plugin(types.SimpleNamespace(
        sconce_register_techniques=sconce_package.hookimpl(lambda register: register(FakeGmp()))),
        name="fake-gmp")
    sconces = _configured(loaders)
    sconces.prune_mode = "GMP"
    sconces.fine_tune_epochs = 1
    assert sconces.num_finetune_epochs == 1
    result = sconces.compress()
    assert isinstance(result, sconce_package.CompressionResult)
    assert [s.technique for s in result.report.stages] == [None, "prune.gmp"]
    assert sconces.evaluate() > 80.0  # trained by compress() before pruning
    printed = capsys.readouterr().out
    assert "Comparison Table" in printed
    assert "Pruned: Latency b=1 vs original" in printed  # the notes, as sconce.compress has them
    assert (tmp_path / "tiny-gmp" / "report.md").is_file()  # saved under experiment_name


def test_measurement_helpers(loaders) -> None:
    sconces = _configured(loaders)
    assert sconces.get_num_parameters() == 116
    with torch.no_grad():
        sconces.model.fc.weight.zero_()
    assert sconces.get_num_parameters(count_nonzero_only=True) == 116 - 64 - 4  # BN bias is 0
    assert sconces.get_model_size() == pytest.approx(
        (116 * 4 + 4 * 4 * 2 + 8) / 2**20)  # params + BN statistics + counter
    # conv 4*9*64 + linear 16*4, plus torchprofile's element counts for batchnorm and pooling
    assert sconces.get_model_macs() == 4 * 9 * 64 + 16 * 4 + 4 * 64 + 16
    assert sconces.measure_latency() > 0


def test_compare_models_prints_a_table(loaders, capsys) -> None:
    sconces = _configured(loaders)
    report = sconces.compare_models(TinyNet(), TinyNet())
    assert [s.title for s in report.stages] == ["Original", "Compressed"]
    assert "Comparison Table" in capsys.readouterr().out


def test_missing_attributes_are_clear() -> None:
    sconces = sconce()
    with pytest.raises(ModelError, match="sconces.model"):
        sconces.get_num_parameters()
    sconces.model = TinyNet()
    with pytest.raises(ConfigError, match="sconces.dataloader"):
        sconces.evaluate()


def test_snn_without_the_plugin_is_an_error(loaders) -> None:
    sconces = _configured(loaders)
    sconces.snn = True
    with pytest.raises(ConfigError, match="pip install sconce-snn"):
        sconces.evaluate()
