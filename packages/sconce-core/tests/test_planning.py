"""Planning without a recipe: stages chosen from the installed techniques by measuring, the
budget held, NaN candidates stopped, unreachable targets refused early, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import sconce
from sconce.api import context as run_context
from sconce.errors import ConfigError
from sconce.metrics.timing import TimingSettings
from sconce.planning import AutoPlan, ConstraintError, Trial, _Planner, choose_techniques
from sconce.plugins import reset_plugins
from sconce.recipe import Constraints

from conftest import make_loaders

FAST = TimingSettings(rounds=1, round_seconds=0.0, warmup_seconds=0.0, min_calls=1, batch_size=4)
METRICS = ["accuracy", "params", "size"]

TECHNIQUES = '''
import time, os, types
import torch
from torch import nn
import sconce


class Mlp(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 4))

    def forward(self, x):
        return self.body(x)


class Narrow(sconce.Technique):
    """Zero the last `sparsity` of the hidden units: accuracy falls as sparsity grows."""

    name, kind, Config = "test.narrow", "prune", sconce.PruneConfig

    def apply(self, model, config, ctx):
        hidden = model.body[1].out_features
        cut = hidden - round(hidden * (1 - config.sparsity))
        with torch.no_grad():
            if cut:
                model.body[1].weight[-cut:] = 0
                model.body[1].bias[-cut:] = 0
                model.body[3].weight[:, -cut:] = 0
        if config.sparsity > float(os.environ.get("NAN_ABOVE", "1")):
            with torch.no_grad():
                model.body[3].weight.fill_(float("nan"))
        return model


class Grid(sconce.Technique):
    """A 'quantization' that rounds weights to a 1/8 grid (deterministic), optionally slow."""

    name, kind, Config = "test.grid", "quantize", sconce.QuantizeConfig

    def apply(self, model, config, ctx):
        if ctx.work_dir.name != "planning":  # slow in the run's stage, not in the candidates
            time.sleep(float(os.environ.get("GRID_SLEEP", "0")))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.round(p * 8) / 8)
        return model


def register():
    sconce.register_plugin(types.SimpleNamespace(sconce_register_techniques=sconce.hookimpl(
        lambda register: (register(Narrow()), register(Grid())))), name="test-planning")
'''

namespace: dict = {}
exec(compile(TECHNIQUES, "techniques", "exec"), namespace)  # the same code the subprocess runs
Mlp = namespace["Mlp"]


@pytest.fixture
def only_test_techniques(monkeypatch):
    """Only this file's techniques: the installed plugins must not change the plan."""
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("NAN_ABOVE", raising=False)
    reset_plugins()
    namespace["register"]()


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = Mlp()
    sconce.train(model, make_loaders(samples=192), epochs=2, lr=2e-2, progress=False,
                 device="cpu")
    return model.eval()


def _compress(model, **options):
    options.setdefault("finetune_epochs", 0.5)
    return sconce.compress(model, make_loaders(samples=192), timing=FAST, progress=False,
                           device="cpu", metrics=METRICS, **options)


def _plan(result) -> AutoPlan:
    return AutoPlan.from_dict(json.loads((result.work_dir / "plan.json").read_text())["plan"])


def test_without_a_recipe_the_plan_is_measured_and_explained(trained, only_test_techniques,
                                                             tmp_path) -> None:
    result = _compress(trained, constraints={"max_accuracy_drop": 2.0}, work_dir=tmp_path)
    plan = _plan(result)
    assert [name for name, _ in plan.stages] == ["test.narrow", "test.grid"]
    chosen = plan.stages[0][1]["sparsity"]
    tried = [t for t in plan.trials if t.purpose == "accuracy"]
    whole = [t for t in plan.trials if t.purpose == "whole plan, full fine-tuning"]
    assert len(tried) >= 3 and all(t.accuracy is not None for t in tried + whole)
    # a brief candidate is judged against the budget left after quantization; a whole plan
    # (pruned, fine-tuned with the run's budget, quantized) against the whole budget
    quant = next(t for t in plan.trials if t.purpose == "quantization")
    left = 2.0 - max(0.0, quant.drop)
    for trial in tried:
        assert trial.accepted == (trial.drop <= left)
    for trial in whole:
        assert trial.technique == "test.narrow+test.grid"
        assert trial.accepted == (trial.drop <= 2.0)
    assert chosen == max(t.config["sparsity"] for t in tried + whole if t.accepted)
    notes = result.report.stages[0].notes
    assert notes["plan"] == "test.narrow -> test.grid"
    assert any("backed off" in v or "pushed" in v for k, v in notes.items() if "reason" in k)
    assert [s.technique for s in result.report.stages] == [None, "test.narrow", "test.grid"]
    drop = result.report.value(0, "accuracy") - result.report.value(-1, "accuracy")
    assert result.report.run["constraints"]["max_accuracy_drop"] == 2.0
    assert (drop <= 2.0) == (result.report.stages[-1].notes["constraints"] == "all met")


def _fake_trials(recovered_by_full_budget: bool):
    """A run_trial whose pruned candidates lose 4 points per unit of sparsity after the brief
    fine-tuning and, when the full budget recovers more, 1.5 after the run's whole one; the
    quantization costs 0.1 points on the original and 1 more per unit of sparsity."""
    def run_trial(self, stages, purpose, epochs, *, evaluate=True, measure=False):
        config = {k: v for _, values in stages for k, v in values.items()}
        ratio = config.get("sparsity", 0.0)
        full = recovered_by_full_budget and epochs >= self.ctx.finetune_epochs
        drop = ratio * (1.5 if full else 4.0)
        if any(name == "test.grid" for name, _ in stages):
            drop += 0.1 + ratio
        trial = Trial("+".join(n for n, _ in stages), config, purpose, self.reference - drop,
                      drop)
        self.trials.append(trial)
        return trial
    return run_trial


def _fake_plan(trained, finetune_epochs: float, quantize: str | None) -> AutoPlan:
    ctx = run_context(sconce.get_data(make_loaders(samples=64)),
                      adapter=sconce.ClassifierAdapter(), finetune_epochs=finetune_epochs,
                      timing=FAST)
    return _Planner(trained, ctx, {}, Constraints(max_accuracy_drop=1.0), probe_epochs=0.5,
                    steps=5, push_steps=3).plan("test.narrow", quantize, budget=1.0)


@pytest.mark.parametrize("recovers", [True, False])
def test_the_planner_pushes_past_the_brief_candidates_with_the_full_budget(
        trained, monkeypatch, recovers) -> None:
    monkeypatch.setattr(_Planner, "run_trial", _fake_trials(recovers))
    plan = _fake_plan(trained, 2.0, None)
    brief = [t for t in plan.trials if t.purpose == "accuracy"]
    pushed = [t for t in plan.trials if t.purpose == "whole plan, full fine-tuning"]
    found = max(t.config["sparsity"] for t in brief if t.accepted)
    assert found < 0.25 and len(pushed) == 3
    assert all(t.accepted == (t.drop <= 1.0) for t in pushed)
    assert all(t.config["sparsity"] > found for t in pushed)
    chosen = plan.stages[0][1]["sparsity"]
    if recovers:  # 1.5 points per unit: up to 2/3 holds; the bisection gets to 0.647
        assert chosen == max(t.config["sparsity"] for t in pushed if t.accepted)
        assert 0.6 < chosen <= 2 / 3
        assert any(r.startswith("test.narrow pushed to 65%") for r in plan.reasons)
    else:
        assert chosen == found
        assert any("no larger ratio kept test.narrow within" in r for r in plan.reasons)


def test_the_push_judges_the_whole_plan_with_its_quantization(trained, monkeypatch) -> None:
    """Quantizing a pruned model costs more than quantizing the original: the pushed ratio is
    the one whose pruned *and quantized* model holds the budget (0.9 / 2.5 = 0.36 here)."""
    monkeypatch.setattr(_Planner, "run_trial", _fake_trials(True))
    plan = _fake_plan(trained, 2.0, "test.grid")
    pushed = [t for t in plan.trials if t.purpose == "whole plan, full fine-tuning"]
    assert pushed and all(t.technique == "test.narrow+test.grid" for t in pushed)
    chosen = plan.stages[0][1]["sparsity"]
    assert [name for name, _ in plan.stages] == ["test.narrow", "test.grid"]
    assert 0.25 < chosen <= 0.36
    assert chosen == max(t.config["sparsity"] for t in pushed if t.accepted)


def test_no_push_when_the_run_fine_tunes_no_longer_than_a_probe(trained, monkeypatch) -> None:
    monkeypatch.setattr(_Planner, "run_trial", _fake_trials(True))
    plan = _fake_plan(trained, 0.5, None)
    assert all(t.purpose == "accuracy" for t in plan.trials)


def test_without_constraints_the_default_budget_is_one_point(trained, only_test_techniques,
                                                             tmp_path) -> None:
    result = _compress(trained, work_dir=tmp_path)
    plan = _plan(result)
    assert plan.budget == 1.0
    assert "default budget of 1 point" in plan.reasons[0]
    assert result.report.run["constraints"] == {"max_accuracy_drop": 1.0}


def test_nan_candidates_are_stopped_and_the_planner_backs_off(trained, only_test_techniques,
                                                              monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NAN_ABOVE", "0.3")
    result = _compress(trained, constraints={"max_accuracy_drop": 100.0}, work_dir=tmp_path)
    plan = _plan(result)
    stopped = [t for t in plan.trials if t.note.startswith("stopped")]
    assert stopped and all(t.config["sparsity"] > 0.3 and not t.accepted for t in stopped)
    assert "nan" in stopped[0].note.lower()
    assert 0 < plan.stages[0][1]["sparsity"] <= 0.3  # with a 100-point budget: only NaN limits
    assert torch.isfinite(result.model.body[3].weight).all()


def test_an_unreachable_target_is_refused_before_any_stage(trained, only_test_techniques,
                                                           tmp_path) -> None:
    started = time.perf_counter()
    with pytest.raises(ConstraintError, match=r"no plan of the installed techniques meets "
                                              r"target_size_mib=1000x: the strongest .* "
                                              r"measures [0-9.]+ MiB \(original [0-9.]+ MiB\)"):
        _compress(trained, constraints={"target_size_mib": "1000x"}, work_dir=tmp_path)
    assert not (tmp_path / "stages").exists()
    assert time.perf_counter() - started < 60


def test_core_alone_is_a_clear_error(monkeypatch, loaders) -> None:
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_plugins()
    with pytest.raises(ConfigError, match="pip install sconce-prune sconce-quant"):
        sconce.compress(Mlp(), loaders, progress=False, device="cpu")


def test_preferences_and_kinds() -> None:
    prune = types.SimpleNamespace(kind="prune", Config=sconce.PruneConfig)
    quant = types.SimpleNamespace(kind="quantize", Config=sconce.QuantizeConfig)
    installed = {"acme.prune": prune, "prune.gmp": prune, "acme.quant": quant}
    assert choose_techniques(installed) == ["prune.gmp", "acme.quant"]
    assert choose_techniques(installed, [("acme.prune",)]) == ["acme.prune", "acme.quant"]
    assert choose_techniques({"odd": types.SimpleNamespace(kind="prune", Config=None)}) == []


RUNNER = '''
import logging, sys, torch
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
from conftest import make_loaders
import sconce
from sconce.metrics.timing import TimingSettings
exec(compile({techniques!r}, "techniques", "exec"))
register()
torch.manual_seed(0)
model = Mlp()
sconce.train(model, make_loaders(samples=192), epochs=2, lr=2e-2, progress=False, device="cpu")
result = sconce.compress(model, make_loaders(samples=192), progress=False, device="cpu",
                         finetune_epochs=0.5, metrics=["accuracy", "params", "size"],
                         timing=TimingSettings(rounds=1, round_seconds=0.0, warmup_seconds=0.0,
                                               min_calls=1, batch_size=4),
                         constraints={{"max_accuracy_drop": 2.0}}, out=sys.argv[1],
                         resume=len(sys.argv) > 2)
print("FINAL", result.report.value(-1, "accuracy"))
'''


def test_resume_after_sigkill_finishes_with_the_same_plan_and_result(tmp_path) -> None:
    script = tmp_path / "run.py"
    script.write_text(RUNNER.format(tests=str(Path(__file__).parent), techniques=TECHNIQUES))
    env = {**os.environ, "SCONCE_DISABLE_PLUGIN_AUTOLOAD": "1", "SCONCE_NO_PROGRESS": "1"}
    env.pop("NAN_ABOVE", None)
    whole = subprocess.run([sys.executable, str(script), str(tmp_path / "whole")], env=env,
                           capture_output=True, text=True, timeout=300, check=True)
    killed_out = tmp_path / "killed"
    slow = subprocess.Popen([sys.executable, str(script), str(killed_out)],
                            env={**env, "GRID_SLEEP": "60"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        first = killed_out / "work" / "stages" / "01-test-narrow" / "stage.json"
        deadline = time.monotonic() + 240
        while not first.is_file() and time.monotonic() < deadline and slow.poll() is None:
            time.sleep(0.2)
        assert first.is_file(), "the first stage never finished"
        os.kill(slow.pid, signal.SIGKILL)  # mid-run: the second stage sleeps in apply()
        assert slow.wait(timeout=30) == -signal.SIGKILL
    finally:
        if slow.poll() is None:
            slow.kill()
    assert not (killed_out / "report.json").exists()
    resumed = subprocess.run([sys.executable, str(script), str(killed_out), "--resume"],
                             env=env, capture_output=True,
                             text=True, timeout=300, check=True)
    whole_plan = json.loads((tmp_path / "whole" / "work" / "plan.json").read_text())["plan"]
    resumed_plan = json.loads((killed_out / "work" / "plan.json").read_text())["plan"]
    assert resumed_plan == whole_plan
    assert "resumed: the plan saved" in resumed.stderr  # not measured again
    assert "resumed: stage 1 (test.narrow) reused" in resumed.stderr
    final = [line for line in whole.stdout.splitlines() if line.startswith("FINAL")]
    assert final and final == [line for line in resumed.stdout.splitlines()
                               if line.startswith("FINAL")]
    report = json.loads((killed_out / "report.json").read_text())
    assert [s["technique"] for s in report["stages"]] == [None, "test.narrow", "test.grid"]
