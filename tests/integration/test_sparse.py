"""Pruned models run and ship sparse: every pruner's output through sparse.engine /
sparse.storage, composed with quant.*, saved and loaded back bit-exactly, and the CLI table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sconce

pytest.importorskip("sconce_prune")
pytest.importorskip("sconce_sparse")

from sconce_sparse.layers import SparseLayer
from sconce_sparse.quantized import SparseQuantized

QUICK = sconce.TimingSettings(threads=1, rounds=1, round_seconds=0.01, warmup_seconds=0.01,
                              batch_size=16)
METRICS = ["accuracy", "params", "nonzero_params", "sparsity", "size"]
DEMO_KWARGS = {"num_classes": 10, "in_channels": 1, "image_size": 8}
ENGINE = ("sparse.engine", {"rounds": 2, "round_seconds": 0.002})
GMP_90 = ("prune.gmp", {"sparsity": 0.9, "allocation": "uniform"})


def _demo() -> torch.nn.Module:
    from sconce.demo import demo_model

    return demo_model()


def _compress(recipe: list, out: Path, finetune_epochs: float = 0) -> sconce.CompressionResult:
    result = sconce.compress(_demo(), "digits", recipe=recipe, finetune_epochs=finetune_epochs,
                             metrics=METRICS, timing=QUICK, progress=False)
    result.save(out, model_spec="demo", model_kwargs=DEMO_KWARGS)
    return result


def _assert_loads_back_exactly(result: sconce.CompressionResult, out: Path) -> torch.nn.Module:
    loaded = sconce.load(out)  # rebuilt from model.json: demo -> pruning -> sparse layers
    x = result.example_inputs.repeat(5, 1, 1, 1)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    return loaded


@pytest.mark.parametrize("pruner", [
    ("prune.gmp", {"sparsity": 0.9, "allocation": "uniform"}),
    ("prune.magnitude", {"sparsity": 0.8}),
    ("prune.nm", {"n": 2, "m": 4}),
])
def test_each_pruner_then_the_engine(pruner, tmp_path: Path) -> None:
    result = _compress([pruner, ENGINE], tmp_path)
    _, pruned, sparse = result.report.stages
    assert sparse.title == "Sparsified"
    assert sparse.values["accuracy"] == pytest.approx(pruned.values["accuracy"], abs=0.3)
    assert sparse.values["nonzero_params"] == pruned.values["nonzero_params"]
    assert sparse.values["size"] < pruned.values["size"]
    layers = json.loads((tmp_path / "model.json").read_text())["stages"][-1]["record"]["layers"]
    assert layers, "the pruned layers were not converted"
    for record in layers.values():
        if record["type"] in ("linear", "conv"):
            assert record["measured"] and record["plan"][-1][0] is None
    if pruner[0] == "prune.nm":
        assert any(r.get("not measured", {}).get("semi24") == "CUDA only" for r in
                   layers.values())
    _assert_loads_back_exactly(result, tmp_path)


def test_block_pruned_layers_are_detected_as_blocks(tmp_path: Path) -> None:
    result = _compress([("prune.gmp", {"sparsity": 0.75, "block": [1, 8], "allocation": "uniform"}),
                        ENGINE], tmp_path, finetune_epochs=0.3)
    layers = result.report.stages[-1]
    record = json.loads((tmp_path / "model.json").read_text())["stages"][-1]["record"]
    blocks = {name: r["block"] for name, r in record["layers"].items() if "block" in r}
    assert blocks and all(block == [1, 8] for block in blocks.values()), blocks
    assert "numba_bsr" in next(iter(record["layers"].values()))["measured"][0]["ms"]
    assert "per-layer formats" in layers.notes
    _assert_loads_back_exactly(result, tmp_path)


@pytest.mark.parametrize("pruner", ["prune.sparsegpt", "prune.wanda", "prune.obc"])
def test_one_shot_pruners_then_the_engine(pruner: str, tmp_path: Path) -> None:
    if pruner not in {t.name for t in sconce.list_techniques()}:
        pytest.skip(f"{pruner} is not installed")
    result = _compress([(pruner, {"sparsity": 0.5}), ENGINE], tmp_path)
    assert result.report.stages[-1].values["size"] < result.report.stages[1].values["size"]
    _assert_loads_back_exactly(result, tmp_path)


def test_storage_after_dynamic_int8_keeps_int8_values(tmp_path: Path) -> None:
    pytest.importorskip("sconce_quant")
    result = _compress([GMP_90,
                        ("quant.dynamic", {"engine": "torch"}), "sparse.storage"], tmp_path)
    _, _, quantized, stored = result.report.stages
    wrapped = [m for m in result.model.modules() if isinstance(m, SparseQuantized)]
    assert wrapped and all(m.weight_values.dtype == torch.int8 for m in wrapped)
    assert stored.values["size"] < quantized.values["size"]
    assert stored.values["accuracy"] == quantized.values["accuracy"]
    assert "int8 layers" in stored.notes
    _assert_loads_back_exactly(result, tmp_path)


def test_storage_after_static_int8_on_torch_ao(tmp_path: Path) -> None:
    pytest.importorskip("sconce_quant")
    result = _compress([GMP_90, ("quant.int8", {"engine": "fx"}),
                        "sparse.storage"], tmp_path)
    wrapped = [m for m in result.model.modules() if isinstance(m, SparseQuantized)]
    assert wrapped
    assert result.report.stages[-1].values["size"] < result.report.stages[-2].values["size"]
    _assert_loads_back_exactly(result, tmp_path)


def test_an_onnx_runtime_model_is_left_with_a_note(tmp_path: Path) -> None:
    pytest.importorskip("sconce_quant")
    result = _compress([GMP_90, ("quant.int8", {"engine": "onnxruntime"}), "sparse.storage"],
                       tmp_path)
    notes = result.report.stages[-1].notes
    assert notes["sparse layers"].startswith("none")
    assert not any(isinstance(m, (SparseLayer, SparseQuantized)) for m in result.model.modules())


def test_cli_table_shows_the_sparse_stage(tmp_path: Path) -> None:
    env = {**os.environ, "SCONCE_NO_PROGRESS": "1"}
    env.pop("SCONCE_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-m", "sconce.cli", "compress", "--model", "demo", "--data", "digits",
         "--technique", "prune.gmp", "--technique", "sparse.engine", "--finetune-epochs", "0",
         "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Sparsified" in done.stdout and "sparse.engine" in done.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    pruned, sparse = report["stages"][1]["values"], report["stages"][2]["values"]
    assert sparse["size"] < pruned["size"]
    assert "per-layer formats" in report["stages"][2]["notes"]
