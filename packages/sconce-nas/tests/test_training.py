"""Supernet training through sconce.train: sandwich steps, checkpoints, resume, reuse."""

from __future__ import annotations

import pytest
import torch

import sconce
from sconce_nas import Supernet, load_supernet, train_supernet
from sconce_nas.evaluation import CandidateEvaluator, EvalBatches
from sconce_nas.training import InplaceDistillation, SandwichRule


def test_a_training_step_runs_largest_smallest_and_random_members(space):
    rule = SandwichRule(Supernet(space), random_subnets=2, seed=0).train()
    logits = rule(torch.randn(5, 1, 8, 8))
    assert logits.shape == (4, 5, 4)
    assert int(rule.steps) == 1
    supernet = rule.supernet.eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(rule.eval()(x), supernet(x))  # eval: the largest member


def test_member_draws_depend_on_seed_and_step_only(space):
    def draws(seed: int, steps: int) -> torch.Tensor:
        torch.manual_seed(0)
        rule = SandwichRule(Supernet(space), random_subnets=3, seed=seed).train()
        rule.steps.fill_(steps)
        torch.manual_seed(1)
        return rule(torch.randn(2, 1, 8, 8)).detach()

    assert torch.equal(draws(0, 5), draws(0, 5))
    assert not torch.equal(draws(0, 5), draws(0, 6))


def test_inplace_distillation_teaches_members_from_the_largest():
    targets = torch.tensor([0, 1])
    agree = torch.tensor([[[4.0, 0.0], [0.0, 4.0]]] * 3)
    disagree = agree.clone()
    disagree[1] = -agree[1]
    loss = InplaceDistillation()
    assert float(loss(disagree, targets)) > float(loss(agree, targets))
    largest_only = torch.nn.functional.cross_entropy(agree[0], targets, label_smoothing=0.1)
    assert torch.isclose(loss(agree, targets), largest_only)  # members agree: no KL term


class _Crash(sconce.TrainCallback):
    def on_step_end(self, state):
        if state.epoch == 1:
            raise KeyboardInterrupt


def test_interrupted_training_resumes_from_the_last_epoch(space, data, tmp_path):
    torch.manual_seed(0)
    rule = SandwichRule(Supernet(space), random_subnets=1, seed=0)
    options = dict(lr=3e-3, criterion=InplaceDistillation(), checkpoint_dir=tmp_path,
                   resume=True, progress=False, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        sconce.train(rule, data, 2, callbacks=[_Crash()], **options)
    steps_per_epoch = len(data.train)
    torch.manual_seed(0)
    again = SandwichRule(Supernet(space), random_subnets=1, seed=0)
    result = sconce.train(again, data, 2, **options)
    assert result.steps == 2 * steps_per_epoch
    assert int(again.steps) == 2 * steps_per_epoch  # the draws continued where they stopped
    assert len(result.history) == 2


def test_train_supernet_learns_and_is_reused_from_its_folder(space, data, tmp_path):
    supernet = train_supernet(space, data, 2, lr=1e-2, seed=0, device="cpu", progress=False,
                              folder=tmp_path)
    assert (tmp_path / "supernet.pt").is_file()
    evaluator = CandidateEvaluator(supernet, EvalBatches.from_data(data, 4, None))
    for choice in (space.smallest(), space.largest()):
        assert evaluator(choice) > 50.0  # 4 classes: chance is 25%
    again = train_supernet(space, data, 2, lr=1e-2, seed=0, device="cpu", progress=False,
                           folder=tmp_path)
    for name, tensor in supernet.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    loaded = load_supernet(tmp_path)
    assert loaded.space.spec() == space.spec()


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from conftest import tiny_data, tiny_space
from sconce_nas import train_supernet

supernet = train_supernet(tiny_space(), tiny_data(), 1, lr=1e-2, seed=0, device="cpu",
                          progress=False, random_subnets=2)
torch.save({{"state": supernet.state_dict(), "world": dist.get_world_size()}},
           {out!r} + f"/rank{{dist.get_rank()}}.pt")
dist.destroy_process_group()
"""


def test_supernet_trains_under_torchrun_with_ddp_and_ranks_agree(tmp_path):
    import socket
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "ddp_supernet.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent),
                                                        out=str(tmp_path))))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={port}", str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["world"] == 2
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key


@pytest.mark.parametrize(("scale", "expected"), [(3.0, 6e-3), (0.5, 1e-3)])
def test_the_chosen_subnet_trains_at_the_scaled_learning_rate(trained_supernet, data, scale,
                                                               expected, monkeypatch):
    from types import SimpleNamespace

    from sconce.context import Context
    from sconce_nas import NASConfig
    from sconce_nas.run import _finetune

    ctx = Context(data=data, finetune_epochs=1.0, finetune_lr=2e-3)
    seen: dict = {}
    monkeypatch.setattr(ctx, "finetune", lambda model, **options: seen.update(options))
    evaluator = CandidateEvaluator(trained_supernet, EvalBatches.from_data(data, 1, 64, 0), 1)
    chosen = SimpleNamespace(choice=trained_supernet.space.smallest())
    _finetune(ctx, NASConfig(finetune_lr_scale=scale, teacher="none"), evaluator,
              trained_supernet, chosen)
    assert seen["lr"] == pytest.approx(expected)
    assert seen["teacher"] is None
