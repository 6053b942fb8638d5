"""The training loop: learning, callbacks, distillation, checkpoints, seeds, DDP."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sconce
from sconce.errors import ConfigError, DataError
from sconce.train import CHECKPOINT_NAME, TrainCallback, TrainState

from conftest import TinyNet, make_loaders


def test_training_learns(loaders) -> None:
    model = TinyNet()
    before = sconce.measure(model, loaders, metrics=["accuracy"])["accuracy"]
    result = sconce.train(model, loaders, epochs=8, lr=1e-2, progress=False)
    after = sconce.measure(model, loaders, metrics=["accuracy"])["accuracy"]
    assert result.model is model
    assert after > 90.0 and after > before
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_callbacks_see_every_step(loaders) -> None:
    events: list[str] = []

    class Recorder(TrainCallback):
        def on_train_begin(self, state: TrainState) -> None:
            events.append(f"begin/{state.total_steps}")

        def on_step_end(self, state: TrainState) -> None:
            events.append(f"step{state.step}")

        def on_epoch_end(self, state: TrainState) -> None:
            events.append(f"epoch{state.epoch}")

        def on_train_end(self, state: TrainState) -> None:
            events.append("end")

    sconce.train(TinyNet(), loaders, epochs=2, callbacks=[Recorder()], progress=False)
    steps_per_epoch = len(sconce.Data.from_value(loaders).train)  # 87 samples / 16
    assert events[0] == f"begin/{2 * steps_per_epoch}"
    assert events[steps_per_epoch + 1] == "epoch0" and events[-1] == "end"
    assert events.count("epoch1") == 1 and f"step{2 * steps_per_epoch}" in events


def test_fractional_epochs_stop_early(loaders) -> None:
    assert sconce.train(TinyNet(), loaders, epochs=0.5, progress=False).steps == 3


def test_same_seed_same_weights(loaders) -> None:
    first, second = TinyNet(), TinyNet()
    second.load_state_dict(first.state_dict())
    sconce.train(first, loaders, epochs=1, seed=3, progress=False)
    sconce.train(second, loaders, epochs=1, seed=3, progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_distillation_uses_the_teacher(loaders) -> None:
    teacher = TinyNet()
    sconce.train(teacher, loaders, epochs=4, lr=1e-2, progress=False)
    student_a, student_b = TinyNet(), TinyNet()
    student_b.load_state_dict(student_a.state_dict())
    sconce.train(student_a, loaders, epochs=1, progress=False)
    sconce.train(student_b, loaders, epochs=1, teacher=teacher, distill_weight=0.9,
                 progress=False)
    assert not torch.equal(student_a.fc.weight, student_b.fc.weight)
    with pytest.raises(ConfigError, match="distill_weight"):
        sconce.train(TinyNet(), loaders, teacher=teacher, distill_weight=2.0, progress=False)


def test_user_optimizer_criterion_and_scheduler(loaders) -> None:
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    sconce.train(model, loaders, epochs=2, optimizer=optimizer, scheduler=scheduler,
                 criterion=torch.nn.CrossEntropyLoss(label_smoothing=0.1), progress=False)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_checkpoint_and_resume(loaders, tmp_path: Path) -> None:
    full = TinyNet()
    start = {k: v.clone() for k, v in full.state_dict().items()}
    sconce.train(full, loaders, epochs=2, seed=1, checkpoint_dir=tmp_path / "full", progress=False)

    interrupted = TinyNet()
    interrupted.load_state_dict(start)
    sconce.train(interrupted, loaders, epochs=2, seed=1, checkpoint_dir=tmp_path / "part",
                 progress=False)
    saved = torch.load(tmp_path / "part" / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1
    resumed = TinyNet()
    resumed.load_state_dict(start)
    result = sconce.train(resumed, loaders, epochs=3, seed=1, checkpoint_dir=tmp_path / "part",
                          resume=True, progress=False)
    assert len(result.history) == 3
    assert not torch.equal(resumed.fc.weight, full.fc.weight)  # trained one epoch more


def test_unlabelled_and_empty_training_data_are_clear(loaders) -> None:
    unlabelled = torch.utils.data.DataLoader(torch.randn(8, 1, 8, 8), batch_size=4)
    with pytest.raises(DataError, match="labelled"):
        sconce.train(TinyNet(), {"train": unlabelled, "test": loaders["test"]}, progress=False)
    with pytest.raises(DataError, match="'train' loader"):
        sconce.train(TinyNet(), {"test": loaders["test"]}, progress=False)


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import sconce
from conftest import TinyNet, make_loaders

torch.manual_seed(1234 + int(__import__("os").environ["RANK"]))  # ranks start different
model = TinyNet()
result = sconce.train(model, make_loaders(samples=128), epochs=2, device="cpu", seed=0,
                      progress=False)
rank = dist.get_rank()
torch.save({{"state": model.state_dict(), "steps": result.steps,
            "world": dist.get_world_size(), "backend": dist.get_backend()}},
           {out!r} + f"/rank{{rank}}.pt")
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_trains_with_ddp_and_ranks_agree(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent),
                                                        out=str(tmp_path))))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["world"] == 2 and rank0["backend"] == "gloo"
    single_rank_steps = len(sconce.Data.from_value(make_loaders(samples=128)).train)
    assert rank0["steps"] == 2 * -(-single_rank_steps // 2)  # each rank reads half
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key


def test_a_criterion_may_be_any_callable_and_goes_through_the_adapter(loaders) -> None:
    seen = []

    class Recording(sconce.ClassifierAdapter):
        def criterion_loss(self, criterion, outputs, targets):
            seen.append(type(criterion).__name__)
            return super().criterion_loss(criterion, outputs, targets)

    def plain_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, targets)

    sconce.train(TinyNet(), loaders, epochs=1, criterion=plain_loss, adapter=Recording(),
                 progress=False)
    assert seen and set(seen) == {"function"}
