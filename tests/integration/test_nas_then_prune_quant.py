"""A searched subnet goes on through the pipeline like any model: nas.search, then
prune.channel and quant.int8; sconce.load rebuilds the whole chain from JSON records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sconce

pytest.importorskip("sconce_nas")
pytest.importorskip("sconce_prune")
pytest.importorskip("sconce_quant")

QUICK = sconce.TimingSettings(threads=1, rounds=1, round_seconds=0.005, warmup_seconds=0.0,
                              min_calls=2, batch_size=16)
SEARCH = {"space_options": {"stages": [[16, 2], [32, 2]], "head_channels": 32},
          "supernet_epochs": 2, "supernet_lr": 1e-2, "trials": 8, "population": 4,
          "workers": 1, "val_samples": 128, "calibration_batches": 2, "finalists": 2,
          "lut_check": 0}


def test_searched_subnet_is_pruned_quantized_and_reloaded(tmp_path: Path) -> None:
    model = sconce.models.demo_cnn(num_classes=10, in_channels=1, image_size=8)
    result = sconce.compress(
        model, "digits",
        recipe=[("nas.search", SEARCH), ("prune.channel", {"sparsity": 0.25}), "quant.int8"],
        constraints={"target_macs": "1.5x"}, finetune_epochs=1, timing=QUICK, progress=False,
        metrics=["accuracy", "macs", "params", "size"])
    result.save(tmp_path, model_spec="demo-cnn",
                model_kwargs={"num_classes": 10, "in_channels": 1, "image_size": 8})
    original, searched, pruned, quantized = result.report.stages
    assert searched.values["macs"] <= original.values["macs"] / 1.5
    assert pruned.values["params"] < searched.values["params"]
    assert quantized.values["size"] < pruned.values["size"] / 2
    assert searched.values["accuracy"] > 50.0
    loaded = sconce.load(tmp_path)  # demo-cnn -> searched subnet -> pruned -> int8
    x = result.example_inputs.repeat(4, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
