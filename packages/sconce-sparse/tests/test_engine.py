"""sparse.engine: choices follow the measurements, a layer where sparse is slower stays dense,
dense models pass through with a note, save/load is bit-exact, bad input is one line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from sparse_helpers import QUICK, SmallCNN, blob_data, sparsify_, unstructured
from torch import nn

import sconce
from sconce.context import Context
from sconce.errors import ConfigError
from sconce_sparse.choice import Measurement, choose_plan
from sconce_sparse.config import EngineConfig
from sconce_sparse.engine import SparseEngine
from sconce_sparse.layers import SparseLayer


def _replayed(record: dict) -> list[list]:
    """The plan the recorded per-round times give (exactly what the engine measured)."""
    measurements = [Measurement.from_dict(m) for m in record["measured"]]
    return [list(entry) for entry in choose_plan(measurements, EngineConfig().min_speedup)]


def test_the_choice_follows_the_measurements() -> None:
    faster_at_1 = Measurement(1, 1, {"dense": [1.0, 1.1, 1.0], "csr": [0.5, 0.6, 0.5],
                                     "numba_csr": [0.4, 0.45, 0.4]})
    slower_at_64 = Measurement(64, 64, {"dense": [8.0, 8.2, 8.1], "csr": [7.9, 8.0, 8.0],
                                        "numba_csr": [9.0, 9.0, 9.1]})
    assert choose_plan([faster_at_1, slower_at_64], 1.1) == ((8, "numba_csr"), (None, "dense"))
    assert choose_plan([faster_at_1, slower_at_64], 3.0) == ((None, "dense"),)
    # paired per-round ratios: a burst in one round cannot flip the decision
    bursty = Measurement(1, 1, {"dense": [1.0, 5.0, 1.0], "csr": [1.2, 1.0, 1.2]})
    assert choose_plan([bursty], 1.1) == ((None, "dense"),)


def test_a_layer_where_sparse_is_slower_stays_dense() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8), nn.ReLU(),
                          nn.Linear(8, 8))
    with torch.no_grad():
        model[0].weight.copy_(unstructured(model[0].weight, 0.95))
        model[2].weight.copy_(unstructured(model[2].weight, 0.9))
        # the planted layer: tiny and only half sparse, so any sparse kernel's fixed cost
        # (conversions, dispatch) dwarfs its 32 multiply-adds
        model[4].weight.copy_(unstructured(model[4].weight, 0.5))
    ctx = Context.for_inputs(torch.randn(1, 256), timing=QUICK)
    engine = SparseEngine()
    out = engine.apply(copy.deepcopy(model), EngineConfig(rounds=5, round_seconds=0.005), ctx)
    layers = ctx.stage.restore_record["layers"]
    assert sorted(layers) == ["0", "2", "4"]
    for name, record in layers.items():
        assert [m["batch"] for m in record["measured"]] == [1, 8]
        assert {"dense", "csr", "numba_csr"} <= set(record["measured"][0]["ms"])
        assert tuple(map(tuple, record["plan"])) == out.get_submodule(name).plan
        assert _replayed(record) == record["plan"]
    planted = layers["4"]
    assert planted["plan"] == [[None, "dense"]]
    speedups = [s for m in planted["measured"] for s in m["speedup"].values()]
    assert speedups and max(speedups) < 1.0, planted["measured"]  # measured slower, every time
    assert "4" in ctx.stage.notes["per-layer formats"]
    with torch.inference_mode():
        x = torch.randn(5, 256)
        assert torch.allclose(out(x), model(x), rtol=1e-4, atol=1e-6)


def test_recorded_times_reproduce_each_plan_on_a_cnn() -> None:
    model = sparsify_(SmallCNN(), 0.9)
    ctx = Context.for_inputs(torch.randn(1, 1, 8, 8), timing=QUICK)
    out = SparseEngine().apply(model, EngineConfig(rounds=3, round_seconds=0.002), ctx)
    layers = ctx.stage.restore_record["layers"]
    assert sorted(layers) == ["classifier.1", "classifier.3", "features.0", "features.3"]
    conv = layers["features.3"]
    assert "numba_direct" in conv["measured"][0]["ms"]
    for name, record in layers.items():
        assert _replayed(record) == record["plan"], name
        assert tuple(map(tuple, record["plan"])) == out.get_submodule(name).plan
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(out(x), model(x), rtol=1e-4, atol=1e-6)


def test_a_model_without_sparse_layers_passes_through_with_a_note() -> None:
    model = SmallCNN()
    ctx = Context.for_inputs(torch.randn(1, 1, 8, 8), timing=QUICK)
    out = SparseEngine().apply(model, EngineConfig(), ctx)
    assert not any(isinstance(m, SparseLayer) for m in out.modules())
    assert ctx.stage.notes["sparse layers"].startswith("none: no supported layer has at least 30%")
    assert ctx.stage.restore_record == {"layers": {}}


def test_compress_save_load_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sparsify_(SmallCNN(), 0.9)
    result = sconce.compress(model, blob_data(), recipe=[("sparse.engine", {"rounds": 2})],
                             finetune_epochs=1, out=tmp_path, timing=QUICK, progress=False,
                             metrics=["accuracy", "params", "nonzero_params", "size"])
    original, sparse = result.report.stages
    assert "fine-tuned" not in sparse.notes  # a sparsify stage with nothing to train
    assert sparse.values["accuracy"] == original.values["accuracy"]
    assert sparse.values["nonzero_params"] == original.values["nonzero_params"]
    assert sparse.values["size"] < 0.3 * original.values["size"]
    assert "per-layer formats" in sparse.notes
    loaded = sconce.load(tmp_path, model=SmallCNN())
    assert {k: v for k, v in loaded.state_dict().items()}.keys() == result.model.state_dict().keys()
    for key, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(6, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), result.model(x))
    plans = [m.plan for m in result.model.modules() if isinstance(m, SparseLayer)]
    assert plans == [m.plan for m in loaded.modules() if isinstance(m, SparseLayer)]


def test_the_size_metric_agrees_with_the_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
    sparsify_(model, 0.9)
    ctx = Context.for_inputs(torch.randn(1, 512), timing=QUICK)
    out = SparseEngine().apply(model, EngineConfig(rounds=1, round_seconds=0.001), ctx)
    size = sconce.measure(out, example_inputs=torch.randn(1, 512), metrics=["size"])["size"]
    torch.save(out.state_dict(), tmp_path / "model.pt")
    on_disk = (tmp_path / "model.pt").stat().st_size
    assert abs(on_disk - size * 2**20) <= 0.02 * on_disk + 4096
    torch.save(sparsify_(nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)),
                         0.9).state_dict(), tmp_path / "dense.pt")
    assert on_disk <= 0.15 * (tmp_path / "dense.pt").stat().st_size


def test_an_unknown_format_is_one_line_before_any_work() -> None:
    with pytest.raises(ConfigError, match=r"unknown sparse format 'cssr'; did you mean 'csr'\?"):
        sconce.compress(SmallCNN(), blob_data(), recipe=[("sparse.engine", {"formats": ["cssr"]})],
                        finetune_epochs=0, timing=QUICK, progress=False)


def test_only_the_formats_asked_for_are_measured() -> None:
    model = sparsify_(nn.Sequential(nn.Linear(64, 64)), 0.9)
    ctx = Context.for_inputs(torch.randn(1, 64), timing=QUICK)
    SparseEngine().apply(model, EngineConfig(formats=("csr",), rounds=1), ctx)
    record = ctx.stage.restore_record["layers"]["0"]
    assert all(set(m["ms"]) == {"dense", "csr"} for m in record["measured"])
