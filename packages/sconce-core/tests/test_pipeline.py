"""sconce.compress: the caller's model untouched, stages measured, checkpoints, resume,
save/load without pickled code, constraints."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import sconce
from sconce.errors import DataError, ModelError
from sconce.metrics.timing import TimingSettings

from conftest import TinyNet

FAST = TimingSettings(rounds=1, round_seconds=0.0, warmup_seconds=0.0, min_calls=1, batch_size=4)
METRICS = ["accuracy", "params", "nonzero_params", "sparsity", "size"]


class Mlp(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Shrink(sconce.Technique):
    """Keep the first `keep` hidden units: a structural change that needs restore()."""

    name, kind, Config = "test.shrink", "prune", sconce.PruneConfig
    calls = 0

    def apply(self, model: Mlp, config: sconce.PruneConfig, ctx: sconce.Context) -> nn.Module:
        type(self).calls += 1
        keep = max(1, round(model.body[1].out_features * (1 - config.sparsity)))
        ctx.set_restore_record({"keep": keep})
        ctx.note("kept hidden units", keep)
        first, last = model.body[1], model.body[3]
        model = self.restore(model, config, {"keep": keep})
        with torch.no_grad():
            model.body[1].weight.copy_(first.weight[:keep])
            model.body[1].bias.copy_(first.bias[:keep])
            model.body[3].weight.copy_(last.weight[:, :keep])
            model.body[3].bias.copy_(last.bias)
        return model

    def restore(self, model: Mlp, config: sconce.PruneConfig, record: dict) -> nn.Module:
        keep = record["keep"]
        model.body[1] = nn.Linear(model.body[1].in_features, keep)
        model.body[3] = nn.Linear(keep, model.body[3].out_features)
        return model


class ZeroHalf(sconce.Technique):
    """Zero the first half of every weight matrix (kept at zero by fine-tuning)."""

    name, kind, Config = "test.zero_half", "prune", sconce.PruneConfig
    calls = 0
    fail = False

    def apply(self, model: nn.Module, config: sconce.PruneConfig, ctx: sconce.Context) -> nn.Module:
        type(self).calls += 1
        if type(self).fail:
            raise RuntimeError("simulated crash")
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param[: param.shape[0] // 2] = 0
        return model


@pytest.fixture(autouse=True)
def _techniques() -> None:
    _register_techniques()


def _register_techniques() -> None:
    Shrink.calls = ZeroHalf.calls = 0
    ZeroHalf.fail = False
    plugin = types.SimpleNamespace(sconce_register_techniques=sconce.hookimpl(
        lambda register: (register(Shrink()), register(ZeroHalf()))))
    sconce.register_plugin(plugin, name="test-techniques")


def _compress(model: nn.Module, loaders, **options):
    options.setdefault("finetune_epochs", 0)
    options.setdefault("metrics", METRICS)
    return sconce.compress(model, loaders, timing=FAST, progress=False, device="cpu",
                           **options)


def test_the_callers_model_is_never_modified(loaders) -> None:
    model = Mlp().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _compress(model, loaders, recipe=[("test.shrink", {"sparsity": 0.5}), "test.zero_half"],
                       finetune_epochs=1)
    assert result.model is not model and model.training
    assert model.body[1].out_features == 16
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_report_has_a_column_per_stage_with_ratios(loaders) -> None:
    result = _compress(Mlp(), loaders, recipe=[("test.shrink", {"sparsity": 0.5}),
                                               "test.zero_half"])
    report = result.report
    assert [s.title for s in report.stages] == ["Original", "Pruned", "Pruned 2"]
    assert report.value(0, "params") == 64 * 16 + 16 + 16 * 4 + 4
    assert report.value(1, "params") == 64 * 8 + 8 + 8 * 4 + 4
    assert report.value(2, "sparsity") > 45.0
    assert report.stages[1].notes["kept hidden units"] == 8
    assert report.stages[1].config == {"sparsity": 0.5}
    markdown = report.to_markdown()
    assert "| Params (M) |" in markdown and "x)" in markdown


def test_finetuning_keeps_pruned_weights_at_zero(loaders) -> None:
    result = _compress(Mlp(), loaders, recipe=["test.zero_half"], finetune_epochs=2)
    assert torch.all(result.model.body[1].weight[:8] == 0)
    assert "fine-tuned" in result.report.stages[1].notes


def test_save_and_load_rebuild_the_structure_without_pickled_code(loaders, tmp_path) -> None:
    result = _compress(Mlp(), loaders, recipe=[("test.shrink", {"sparsity": 0.75})])
    out = result.save(tmp_path / "out")
    description = json.loads((out / "model.json").read_text())
    assert description["stages"][0]["record"] == {"keep": 4}
    loaded = sconce.load(out, model=Mlp())
    inputs = torch.randn(5, 1, 8, 8)
    assert torch.allclose(loaded(inputs), result.model(inputs))
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.json", "report.json",
                                               "report.md", "report.png"}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_load_from_a_registered_spec(loaders, tmp_path) -> None:
    model = sconce.models.demo_cnn(num_classes=4, in_channels=1, image_size=8)
    result = _compress(model, loaders, recipe=["test.zero_half"])
    result.save(tmp_path / "o", model_spec="demo-cnn",
                model_kwargs={"num_classes": 4, "in_channels": 1, "image_size": 8})
    assert not (tmp_path / "o" / "model.pt2").exists()  # the spec rebuilds it: no program
    loaded = sconce.load(tmp_path / "o")
    inputs = torch.randn(3, 1, 8, 8)
    assert torch.allclose(loaded(inputs), result.model(inputs), atol=1e-6)


def test_load_errors_are_clear(tmp_path, loaders) -> None:
    with pytest.raises(ModelError, match="no model.json"):
        sconce.load(tmp_path)
    result = _compress(Mlp(), loaders, recipe=[("test.shrink", {"sparsity": 0.5})])
    result.save(tmp_path / "x")
    (tmp_path / "x" / "model.pt2").unlink(missing_ok=True)
    with pytest.raises(ModelError, match="model=<a fresh instance"):
        sconce.load(tmp_path / "x")
    with pytest.raises(ModelError, match="do not fit"):
        sconce.load(tmp_path / "x", model=TinyNet())


def test_resume_restarts_after_the_last_finished_stage(loaders, tmp_path) -> None:
    recipe = [("test.shrink", {"sparsity": 0.5}), "test.zero_half"]
    model = Mlp()
    ZeroHalf.fail = True
    failed = _compress(model, loaders, recipe=recipe, out=tmp_path)
    assert failed.failed is not None and "simulated crash" in failed.failed.error
    assert Shrink.calls == 1
    assert (tmp_path / "work" / "stages" / "01-test-shrink" / "stage.json").is_file()
    assert not (tmp_path / "work" / "stages" / "02-test-zero_half").exists()

    ZeroHalf.fail = False
    result = _compress(model, loaders, recipe=recipe, out=tmp_path, resume=True)
    assert Shrink.calls == 1 and ZeroHalf.calls == 2
    assert result.model.body[1].out_features == 8
    assert result.report.stages[1].notes["kept hidden units"] == 8

    changed = [("test.shrink", {"sparsity": 0.25}), "test.zero_half"]
    _compress(model, loaders, recipe=changed, out=tmp_path, resume=True)
    assert Shrink.calls == 2  # a different config is not reused


def test_constraints_are_checked_on_the_final_model(loaders) -> None:
    result = _compress(Mlp(), loaders, recipe=["test.zero_half"],
                       constraints={"max_accuracy_drop": 0.0, "target_size_mib": "100x"})
    note = result.report.stages[-1].notes["constraints"]
    assert "size is" in note
    assert result.report.run["constraints"]["target_size_mib"] == "100x"


def test_a_model_that_does_not_fit_the_data(loaders) -> None:
    with pytest.raises(DataError, match=r"cannot run on inputs of shape \(2, 1, 8, 8\)"):
        _compress(nn.Linear(3, 4), loaders, recipe=["test.zero_half"])
    with pytest.raises(ModelError, match="nn.Module"):
        sconce.compress("not a model", loaders)  # type: ignore[arg-type]


def test_a_technique_must_return_a_module(loaders) -> None:
    class Broken(sconce.Technique):
        name, kind, Config = "test.broken", "prune", sconce.PruneConfig

        def apply(self, model, config, ctx):
            return None

    sconce.register_plugin(types.SimpleNamespace(sconce_register_techniques=sconce.hookimpl(
        lambda register: register(Broken()))), name="broken")
    with pytest.raises(sconce.TechniqueError, match="returned NoneType"):
        _compress(Mlp(), loaders, recipe=["test.broken"])


def test_stage_checkpoints_are_complete_folders(loaders, tmp_path: Path) -> None:
    _compress(Mlp(), loaders, recipe=["test.zero_half"], out=tmp_path)
    stage = tmp_path / "work" / "stages" / "01-test-zero_half"
    assert sorted(p.name for p in stage.iterdir()) == ["model.json", "model.pt", "stage.json"]
    assert not [p for p in (tmp_path / "work" / "stages").iterdir() if p.name.startswith(".")]


class Doubled(nn.Module):
    """Marks a model that an adapter of its own must run (its outputs doubled)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class DoublingAdapter(sconce.ClassifierAdapter):
    def forward(self, model: nn.Module, inputs):
        return 2 * super().forward(model, inputs)


class Wrap(sconce.Technique):
    """Wrap the model into Doubled: a stage after which the model runs differently."""

    name, kind, Config = "test.wrap", "convert", sconce.Config

    def apply(self, model: nn.Module, config: sconce.Config, ctx: sconce.Context) -> nn.Module:
        ctx.set_restore_record({})
        return Doubled(model)

    def restore(self, model: nn.Module, config: sconce.Config, record: dict) -> nn.Module:
        return Doubled(model)


class ModelKind(sconce.Metric):
    """1 for models run by the DoublingAdapter; not applicable to the others."""

    name, label, unit = "model_kind", "Kind", ""

    def measure(self, model: nn.Module, ctx: sconce.Context) -> float:
        if not isinstance(ctx.adapter, DoublingAdapter):
            raise sconce.MetricNotApplicable("plain model")
        ctx.note("kind", "doubled")
        return 1.0


def test_each_stage_is_run_by_the_adapter_for_what_it_became(loaders) -> None:
    plugin = types.SimpleNamespace(
        sconce_register_techniques=sconce.hookimpl(lambda register: register(Wrap())),
        sconce_register_metrics=sconce.hookimpl(lambda register: register(ModelKind())),
        sconce_model_adapter=sconce.hookimpl(
            lambda model: DoublingAdapter() if isinstance(model, Doubled) else None))
    sconce.register_plugin(plugin, name="test-adapters")
    result = _compress(Mlp(), loaders, recipe=["test.wrap"],
                       metrics=["model_kind", "params"])
    original, wrapped = result.report.stages
    assert "model_kind" not in original.values and wrapped.values["model_kind"] == 1.0
    assert wrapped.notes["kind"] == "doubled"
    assert [m.name for m in result.report.metrics] == ["model_kind", "params"]


def test_metrics_that_apply_to_no_stage_are_left_out(loaders) -> None:
    plugin = types.SimpleNamespace(
        sconce_register_metrics=sconce.hookimpl(lambda register: register(ModelKind())))
    sconce.register_plugin(plugin, name="test-metric")
    result = _compress(Mlp(), loaders, recipe=["test.zero_half"],
                       metrics=["model_kind", "params"])
    assert [m.name for m in result.report.metrics] == ["params"]
    assert "model_kind" not in sconce.measure(Mlp(), loaders, metrics=["model_kind", "params"])


def test_the_planner_follows_the_adapters_groups(loaders, monkeypatch) -> None:
    class Suggesting(DoublingAdapter):
        recipe_groups = (("test.missing", "test.zero_half"),)

    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")  # only this file's techniques
    from sconce.plugins import reset_plugins

    reset_plugins()
    _register_techniques()
    plugin = types.SimpleNamespace(sconce_model_adapter=sconce.hookimpl(
        lambda model: Suggesting() if isinstance(model, Doubled) else None))
    sconce.register_plugin(plugin, name="test-suggesting")
    result = _compress(Doubled(Mlp()), loaders, constraints={"max_accuracy_drop": 100.0})
    assert [s.technique for s in result.report.stages] == [None, "test.zero_half"]
