"""Quantizing a pruned model: prune.channel / prune.gmp, then quant.int8 (each engine), saved
and loaded back through the core; the pruning survives quantization."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sconce

pytest.importorskip("sconce_prune")
pytest.importorskip("sconce_quant")

QUICK = sconce.TimingSettings(threads=1, rounds=1, round_seconds=0.02, warmup_seconds=0.02,
                              batch_size=16)
METRICS = ["accuracy", "params", "nonzero_params", "sparsity", "size"]


DEMO_KWARGS = {"num_classes": 10, "in_channels": 1, "image_size": 8}


def _demo() -> torch.nn.Module:
    from sconce.demo import demo_model

    return demo_model()


@pytest.mark.parametrize("engine", ["onnxruntime", "fx"])
def test_channel_pruned_then_int8(engine: str, tmp_path: Path) -> None:
    result = sconce.compress(
        _demo(), "digits",
        recipe=[("prune.channel", {"sparsity": 0.5}), ("quant.int8", {"engine": engine})],
        finetune_epochs=2, metrics=METRICS, timing=QUICK, progress=False)
    result.save(tmp_path, model_spec="demo", model_kwargs=DEMO_KWARGS)
    original, pruned, quantized = result.report.stages
    assert [s.title for s in result.report.stages] == ["Original", "Pruned", "Quantized"]
    assert pruned.values["params"] < 0.6 * original.values["params"]
    assert quantized.values["size"] < pruned.values["size"] / 3
    assert quantized.values["accuracy"] >= pruned.values["accuracy"] - 1.5
    assert quantized.notes["int8 engine"].startswith(engine)
    loaded = sconce.load(tmp_path)  # rebuilds demo -> pruned channels -> int8, weights_only
    x = result.example_inputs.repeat(4, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_gmp_sparse_then_int8_keeps_the_zeros(tmp_path: Path) -> None:
    result = sconce.compress(
        _demo(), "digits", recipe=[("prune.gmp", {"sparsity": 0.7}), "quant.int8"],
        finetune_epochs=2, metrics=METRICS, timing=QUICK, progress=False)
    result.save(tmp_path, model_spec="demo", model_kwargs=DEMO_KWARGS)
    _, pruned, quantized = result.report.stages
    assert pruned.values["sparsity"] > 50.0
    # a zero weight is exactly zero in int8: the sparsity is still there (plus weights that
    # round to zero)
    assert quantized.values["sparsity"] >= pruned.values["sparsity"] - 1.0
    assert quantized.values["accuracy"] >= pruned.values["accuracy"] - 1.5
    loaded = sconce.load(tmp_path)
    x = result.example_inputs.repeat(4, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
