"""Through sconce itself: plugin discovery, compress, the report, the CLI, the legacy API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sconce
from sconce.cli import main
from sconce.errors import ConfigError
from sconce_prune.config import GMPConfig, MagnitudeConfig, NMConfig

TINY = Path(__file__).with_name("tiny.py")


def test_the_plugin_loads_with_only_the_core_installed() -> None:
    sconce.load_plugins()
    info = next(i for i in sconce.plugin_infos() if i.name == "prune")
    assert info.error == ""
    assert info.distribution == "sconce-prune"
    assert "sconce_register_techniques" in info.hooks
    for name in ("prune.gmp", "prune.magnitude", "prune.nm"):
        assert sconce.get_technique(name).name == name


def test_gmp_default_config_uses_automatic_ratios() -> None:
    config = sconce.get_technique("prune.gmp").Config()
    assert config.allocation == "auto"
    assert sconce.sconce().technique_for_prune_mode() == "prune.gmp"


@pytest.mark.parametrize("bad", [
    {"sparsity": 1.0}, {"sparsity": -0.1}, {"allocation": "random"},
    {"initial_sparsity": 0.6, "sparsity": 0.5}, {"prune_start": 0.7, "prune_end": 0.5},
    {"pruning_steps": 0}, {"sensitivity_ratios": [0.9, 0.5]}, {"skip_layers": "features"},
    {"max_accuracy_drop": 1.0, "allocation": "uniform"}, {"sparsity_typo": 0.5},
])
def test_invalid_gmp_configs_raise_clear_errors(bad) -> None:
    with pytest.raises(ConfigError):
        GMPConfig.from_dict(bad)


@pytest.mark.parametrize(("bad", "message"), [
    ({"n": 5, "m": 4}, "n must be smaller than m"),
    ({"n": 4, "m": 4}, "n must be smaller than m"),
    ({"n": 0, "m": 4}, "positive integer"),
    ({"n": 2, "m": 4, "sparsity": 0.75}, "does not match 2:4"),
])
def test_invalid_nm_configs_raise_clear_errors(bad, message) -> None:
    with pytest.raises(ConfigError, match=message):
        NMConfig.from_dict(bad)
    assert NMConfig.from_dict(NMConfig(n=1, m=8).to_dict()).sparsity == 0.875


def test_unknown_layer_name_is_a_config_error_listing_close_names(trained, data) -> None:
    with pytest.raises(ConfigError, match=r"'features\.0\.0'"):
        sconce.compress(trained, data, recipe=[("prune.gmp", {"skip_layers": ["features.0.O"]})],
                        finetune_epochs=0, progress=False, metrics=["sparsity"], device="cpu")
    with pytest.raises(ConfigError, match="prunable layers: "):
        sconce.compress(trained, data, recipe=[("prune.magnitude", {"skip_layers": ["zzz"]})],
                        finetune_epochs=0, progress=False, metrics=["sparsity"], device="cpu")


def test_report_shows_nonzero_params_and_sparsity_per_stage(trained, data, tmp_path) -> None:
    recipe = [("prune.gmp", {"sparsity": 0.75, "sensitivity_samples": 64,
                             "sensitivity_ratios": [0.5, 0.9]}),
              ("prune.nm", {"n": 2, "m": 4, "finetune_epochs": 0.25})]
    result = sconce.compress(trained, data, recipe=recipe, finetune_epochs=0.5, progress=False,
                             device="cpu", out=tmp_path,
                             metrics=["accuracy", "params", "nonzero_params", "sparsity"])
    original, gmp, nm = result.report.stages
    assert gmp.values["params"] == original.values["params"]
    assert gmp.values["nonzero_params"] < 0.45 * original.values["nonzero_params"]
    assert gmp.values["sparsity"] > 55.0 and original.values["sparsity"] < 1.0
    assert nm.values["sparsity"] >= gmp.values["sparsity"]
    assert isinstance(gmp.notes["per-layer ratios"], dict)
    assert "cubic" in gmp.notes["schedule"]
    assert (tmp_path / "artifacts" / "prune-gmp-sensitivity.png").is_file()
    markdown = (tmp_path / "report.md").read_text()
    assert "Non-zero params" in markdown and "per-layer ratios" in markdown
    # the saved model loads back as a plain module with the same zeros
    loaded = sconce.load(tmp_path, model=sconce.models.demo_cnn(num_classes=4, in_channels=1,
                                                                   image_size=8))
    zeros = sum(int((p == 0).sum()) for p in loaded.parameters())
    assert zeros == sum(int((p == 0).sum()) for p in result.model.parameters())
    for name, param in result.model.named_parameters():
        if name in ("features.1.0.weight", "classifier.1.weight"):  # N:M kept through tuning
            groups = param.detach().movedim(1, -1).reshape(-1, 4)
            assert int((groups != 0).sum(1).max()) <= 2


def test_cli_compress_with_prune_gmp_end_to_end(tmp_path) -> None:
    out = tmp_path / "out"
    code = main(["-q", "compress", "--model", "demo-cnn", "--train-epochs", "1",
                 "--data", f"{TINY}:tiny_data", "--technique", "prune.gmp", "--finetune-epochs", "0.5", "--out", str(out),
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    pruned = report["stages"][1]
    assert pruned["technique"] == "prune.gmp"
    assert pruned["values"]["sparsity"] > 20.0
    assert pruned["values"]["nonzero_params"] < report["stages"][0]["values"]["nonzero_params"]
    assert (out / "model.pt").is_file()


def test_legacy_prune_mode_gmp_runs_prune_gmp(trained, data) -> None:
    from sconce import sconce as Legacy

    legacy = Legacy()
    legacy.model = trained
    legacy.dataloader = {"train": data.train, "val": data.val, "test": data.test}
    legacy.epochs = 0
    legacy.quantize = False
    legacy.num_finetune_epochs = 0.25
    legacy.progress = False
    legacy.device = "cpu"
    result = legacy.compress()
    assert result.report.stages[1].technique == "prune.gmp"
    assert "per-layer ratios" in result.report.stages[1].notes


def test_magnitude_config_defaults_are_the_simple_baseline() -> None:
    config = MagnitudeConfig()
    assert (config.allocation, config.sparsity, config.skip_layers) == ("uniform", 0.5, None)
