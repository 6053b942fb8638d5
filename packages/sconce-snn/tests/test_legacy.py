"""The original attribute API with spiking networks: sconces.snn, sconces.num_steps."""

from __future__ import annotations

from pathlib import Path

import snntorch.functional as SF
import torch
from snn_helpers import Net, tiny_data

from sconce import sconce
from sconce_snn import SpikingAdapter


def _sconces(model: torch.nn.Module, out_dir: Path | None = None) -> sconce:
    sconces = sconce()
    sconces.out_dir = None if out_dir is None else str(out_dir)  # never the test's cwd
    sconces.model = model
    sconces.dataloader = {"train": tiny_data().train, "test": tiny_data().test}
    sconces.snn = True
    sconces.num_steps = 6
    sconces.device = "cpu"
    sconces.progress = False
    return sconces


def test_num_steps_reaches_the_adapter(monkeypatch) -> None:
    seen = []
    original = SpikingAdapter.forward

    def spy(self, model, inputs):
        seen.append(self.num_steps)
        return original(self, model, inputs)

    monkeypatch.setattr(SpikingAdapter, "forward", spy)
    torch.manual_seed(0)
    sconces = _sconces(Net())
    sconces.criterion = SF.ce_rate_loss()  # the snnTorch loss of the original examples
    sconces.epochs = 2
    sconces.optimizer = torch.optim.Adam(sconces.model.parameters(), lr=1e-2)
    sconces.train()
    assert seen and set(seen) == {6}
    assert sconces.evaluate() >= 85.0


def test_compress_prunes_and_reports_snn_metrics(trained_snn, tmp_path) -> None:
    sconces = _sconces(trained_snn, tmp_path)
    sconces.epochs = 0
    sconces.prune_mode = ""  # no pruning plugin in this package's tests
    sconces.num_finetune_epochs = 0
    result = sconces.compress()
    assert [s.technique for s in result.report.stages] == [None, "snn.int8_weights"]
    assert result.report.value("Original", "spike_rate") is not None
    assert result.report.value("Original", "accuracy") >= 85.0
    assert result.report.value("Quantized", "size") < result.report.value("Original", "size")
    assert (tmp_path / "sconce" / "model.json").is_file()  # saved under experiment_name
