"""nas.search in the pipeline and from the CLI: limits met, a loadable standalone model."""

from __future__ import annotations

import json

import torch

import sconce
from sconce_nas import NASConfig
from sconce_nas.elastic import DEFAULT_STAGES
from sconce_nas.technique import NASSearch

from conftest import QUICK_TIMING

TINY = {"space_options": {"stages": [[8, 2], [16, 2]], "head_channels": 32},
        "supernet_epochs": 2, "supernet_lr": 1e-2, "trials": 8, "population": 4,
        "workers": 1, "val_samples": 64, "calibration_batches": 2, "finalists": 2,
        "lut_check": 2}


def test_technique_is_registered_with_kind_search():
    technique = sconce.get_technique("nas.search")
    assert isinstance(technique, NASSearch)
    assert technique.kind == "search"
    assert NASConfig.from_dict(NASConfig(**TINY).to_dict()) == NASConfig(**TINY)


def test_compress_meets_the_constraint_and_the_saved_model_loads_exactly(data, tmp_path):
    torch.manual_seed(0)
    model = sconce.models.demo_cnn(num_classes=4, in_channels=1, image_size=8)
    result = sconce.compress(model, data, recipe=[("nas.search", TINY)],
                             constraints={"target_macs": "2x"}, finetune_epochs=1,
                             timing=QUICK_TIMING, out=tmp_path / "out", progress=False,
                             metrics=["accuracy", "macs", "params", "size"])
    original, final = result.report.stages[0], result.report.stages[-1]
    assert final.values["macs"] <= original.values["macs"] / 2
    assert final.notes["constraints"] == "all met"
    assert final.values["accuracy"] > 50.0  # 4 classes
    assert "chosen subnet" in final.notes and "latency table check" in final.notes
    assert (tmp_path / "out" / "artifacts" / "nas-pareto.png").stat().st_size > 10_000
    search = json.loads((tmp_path / "out" / "artifacts" / "nas-search.json").read_text())
    assert len(search["search"]["candidates"]) == 8
    loaded = sconce.load(tmp_path / "out", model=model)
    x = data.example_inputs(16)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())  # deployed
    assert sum(p.numel() for p in model.parameters()) == original.values["params"]  # untouched


def test_sconce_nas_command_saves_a_model_sconce_load_rebuilds(tmp_path):
    from sconce.cli import main

    out = tmp_path / "nas-out"
    code = main(["nas", "--data", "digits", "--target-params", "60k", "--supernet-epochs",
                 "0.3", "--trials", "6", "--population", "3", "--workers", "1",
                 "--lut-check", "0", "--finetune-epochs", "0.2", "--no-progress", "--out", str(out)])
    assert code == 0
    loaded = sconce.load(out)  # rebuilt by name (elastic-cnn) from the recorded choice
    params = sum(p.numel() for p in loaded.parameters())
    assert params <= 60_000
    record = json.loads((out / "model.json").read_text())["stages"][0]["record"]
    assert record["family"] == "elastic-cnn" and set(record["choice"]) == {
        f"stage{i}.{d}" for i in range(1, len(DEFAULT_STAGES) + 1)
        for d in ("width", "depth", "kernel", "expansion")}
    assert (out / "artifacts" / "nas-pareto.png").is_file()
