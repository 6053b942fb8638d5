"""Issue 9: a saved folder never runs code, --resume never mixes runs, --seed reproduces, two
runs never share an output folder, plugin name clashes keep the first, every mistake is one
line, and files get the user's umask."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import types
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

import sconce
from sconce.cli import main
from sconce.errors import ConfigError, DataError, ModelError
from sconce.metrics.timing import TimingSettings
from sconce.plugins import registry

FAST = TimingSettings(rounds=1, round_seconds=0.0, warmup_seconds=0.0, min_calls=1, batch_size=4)
METRICS = ["accuracy", "params", "nonzero_params", "sparsity", "size"]
HERE = Path(__file__).parent


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The single ``sconce: error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.strip().splitlines() if line.startswith("sconce: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _saved_demo(folder: Path) -> Path:
    """A folder saved as sconce saves one (the demo CNN, rebuilt from its registered name)."""
    model = sconce.models.demo_cnn(num_classes=10, in_channels=1, image_size=8)
    sconce.serialization.save_model(model, folder, architecture=sconce.serialization.Architecture(
        "demo-cnn", {"num_classes": 10, "in_channels": 1, "image_size": 8}))
    return folder


def _poison(folder: Path, spec: str, kwargs: dict[str, object]) -> None:
    description = json.loads((folder / "model.json").read_text())
    description.update(spec=spec, kwargs=kwargs)
    (folder / "model.json").write_text(json.dumps(description))


# --- a saved folder is data ---------------------------------------------------------------------
def test_a_command_in_model_json_never_runs(tmp_path, capsys, monkeypatch) -> None:
    folder = _saved_demo(tmp_path / "evil")
    marker = tmp_path / "PWNED"
    _poison(folder, "os:system", {"command": f"touch {marker}"})
    with pytest.raises(ModelError, match="names code .*trust_code=True"):
        sconce.load(folder)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    for argv in (["measure", "--model", str(folder)],
                 ["compress", "--model", str(folder), "--out", str(tmp_path / "o")]):
        code, _, err = run(argv, capsys)
        assert code == 2 and "names code" in one_error_line(err)
    assert not marker.exists()


def test_a_python_file_in_model_json_runs_only_with_trust_code(tmp_path, capsys,
                                                               monkeypatch) -> None:
    folder = _saved_demo(tmp_path / "evil")
    marker = tmp_path / "IMPORTED"
    (folder / "x.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("ran")
        from sconce.models import demo_cnn as Net
    """))
    _poison(folder, f"{folder}/x.py:Net", {"num_classes": 10, "in_channels": 1, "image_size": 8})
    with pytest.raises(ModelError, match="names code"):
        sconce.load(folder)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    code, _, err = run(["measure", "--model", str(folder)], capsys)
    assert code == 2 and "--trust-code" in one_error_line(err)
    assert not marker.exists()
    # the explicit opt-in runs it, as trust_remote_code does
    assert isinstance(sconce.load(folder, trust_code=True), nn.Module)
    assert marker.read_text() == "ran"


def test_model_json_cannot_hand_objects_to_a_factory(tmp_path) -> None:
    folder = _saved_demo(tmp_path / "odd")
    _poison(folder, "demo-cnn", {"num_classes": {"__class__": "os.system"}})
    with pytest.raises(ModelError, match="plain JSON values"):
        sconce.load(folder)


def test_an_exported_program_needs_trust_code(tmp_path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    sconce.serialization.save_model(net, tmp_path, architecture=sconce.serialization.Architecture(),
                                    example_inputs=torch.randn(1, 1, 8, 8))
    assert (tmp_path / "model.pt2").is_file()
    with pytest.raises(ModelError, match="unpickles"):
        sconce.load(tmp_path)
    assert isinstance(sconce.load(tmp_path, trust_code=True), nn.Module)


# --- resume never mixes runs -----------------------------------------------------------------------
class Halve(sconce.Technique):
    """Halve every weight."""

    name, kind, Config = "test.halve", "prune", sconce.PruneConfig
    calls = 0

    def apply(self, model: nn.Module, config: sconce.PruneConfig, ctx: sconce.Context) -> nn.Module:
        type(self).calls += 1
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(0.5)
        return model


class Boom(sconce.Technique):
    """Raises inside apply, like a buggy technique."""

    name, kind, Config = "test.boom", "quantize", sconce.Config

    def apply(self, model: nn.Module, config: sconce.Config, ctx: sconce.Context) -> nn.Module:
        with torch.no_grad():
            next(model.parameters()).fill_(7.0)  # damages the model before failing
        raise ValueError("the int8 engine is on fire")


def _register_test_techniques() -> None:
    plugin = types.SimpleNamespace(sconce_register_techniques=sconce.hookimpl(
        lambda register: (register(Halve()), register(Boom()))))
    sconce.register_plugin(plugin, name="reliability-tests")


def _compress(model: nn.Module, loaders, **options):
    return sconce.compress(model, loaders, device="cpu", metrics=METRICS, timing=FAST,
                           progress=False, **options)


def test_resume_with_another_model_is_refused(loaders, tiny, tmp_path) -> None:
    from conftest import TinyNet

    _register_test_techniques()
    _compress(tiny, loaders, recipe=["test.halve"], finetune_epochs=0, out=tmp_path)
    Halve.calls = 0
    _compress(tiny, loaders, recipe=["test.halve"], finetune_epochs=0, out=tmp_path, resume=True)
    assert Halve.calls == 0  # the same run: the stage is reused
    other = TinyNet()  # same shapes, other weights
    with pytest.raises(ConfigError, match=r"another run \(model weights differ\)"):
        _compress(other, loaders, recipe=["test.halve"], finetune_epochs=0, out=tmp_path,
                  resume=True)
    with pytest.raises(ConfigError, match=r"finetune_epochs differ"):
        _compress(tiny, loaders, recipe=["test.halve"], finetune_epochs=1, out=tmp_path,
                  resume=True)
    from conftest import make_loaders

    with pytest.raises(ConfigError, match=r"\(data differ\)"):
        _compress(tiny, make_loaders(seed=1), recipe=["test.halve"], finetune_epochs=0,
                  out=tmp_path, resume=True)


def test_cli_resume_after_other_training_is_refused(tmp_path, capsys, monkeypatch, round_half) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    base = ["compress", "--model", "demo-cnn", "--out", "o", "--finetune-epochs", "0"]
    assert run([*base, "--train-epochs", "1"], capsys)[0] == 0
    code, _, err = run([*base, "--train-epochs", "0", "--resume"], capsys)
    assert code == 2 and "model weights differ" in one_error_line(err)


# --- --seed reproduces --------------------------------------------------------------------------
def _without_timings(report: dict) -> list[dict]:
    timed = {m["name"] for m in report["metrics"] if "latency" in m["name"]}
    return [{k: v for k, v in stage["values"].items() if k not in timed}
            for stage in report["stages"]]


def test_the_same_command_twice_gives_the_same_report(tmp_path, capsys, monkeypatch, round_half) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reports = []
    for out in ("a", "b"):
        torch.manual_seed(len(out) * 1000 + ord(out))  # whatever state the process is in
        code, _, err = run(["compress", "--model", "demo-cnn", "--train-epochs", "1",
                            "--seed", "5", "--out", out], capsys)
        assert code == 0, err
        reports.append(json.loads((tmp_path / out / "report.json").read_text()))
    first, second = (_without_timings(r) for r in reports)
    assert first == second
    assert first[0]["accuracy"] is not None


# --- one run per output folder ------------------------------------------------------------------
def test_two_concurrent_runs_into_one_folder_never_both_succeed(tmp_path) -> None:
    (tmp_path / "slowdata.py").write_text(textwrap.dedent("""
        import time, types
        import sconce

        class Half(sconce.Technique):  # something to plan with, the plugins being off
            name, kind, Config = "test.half", "quantize", sconce.QuantizeConfig

            def apply(self, model, config, ctx):
                return model.half().float()

        def digits(batch_size=64):
            sconce.register_plugin(types.SimpleNamespace(
                sconce_register_techniques=sconce.hookimpl(lambda register: register(Half()))),
                name="test-half")
            time.sleep(6)  # both runs are alive at once
            return sconce.get_data("digits", batch_size=batch_size)
    """))
    env = {**os.environ, "SCONCE_NO_PROGRESS": "1", "SCONCE_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "sconce.cli", "-q", "compress", "--model", "demo-cnn",
            "--data", "slowdata:digits", "--finetune-epochs", "0", "--out", str(tmp_path / "o")]
    runs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another sconce run is writing into" in one_error_line(refused)


def test_the_lock_is_reentrant_and_waits_when_asked(tmp_path) -> None:
    from sconce.storage import folder_lock

    with folder_lock(tmp_path), folder_lock(tmp_path):  # the CLI, then the pipeline
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import pathlib, sys, time
            from sconce.storage import folder_lock
            with folder_lock({str(tmp_path)!r}):
                print("locked", flush=True)
                time.sleep(2)
                pathlib.Path({str(tmp_path / "released")!r}).write_text("")
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match="another sconce run is writing into"):
        with folder_lock(tmp_path):
            pass
    with folder_lock(tmp_path, wait=True):
        assert (tmp_path / "released").exists()  # got the lock only after the holder ended
    holder.wait(timeout=60)


def test_an_unwritable_out_fails_before_any_compute(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")

    def no_compute(*args, **kwargs):
        raise AssertionError("data was loaded before the output folder was checked")

    monkeypatch.setattr("sconce.cli._load_data", no_compute)
    code, _, err = run(["compress", "--out", "afile/sub"], capsys)
    assert code == 2 and "'afile/sub' is not writable" in one_error_line(err)
    with pytest.raises(ConfigError, match="not writable"):
        sconce.compress(nn.Linear(2, 2), {"test": [(torch.zeros(1, 2), torch.zeros(1).long())]},
                        out=tmp_path / "afile" / "x")


# --- plugin name clashes ------------------------------------------------------------------------
class Gmp(sconce.Technique):
    """A first-party technique."""

    name, kind, Config = "prune.gmp", "prune", sconce.PruneConfig
    origin = "sconce-prune"

    def apply(self, model: nn.Module, config: sconce.PruneConfig, ctx: sconce.Context) -> nn.Module:
        return model


class Channel(Gmp):
    """Another technique of the same package."""

    name = "prune.channel"


class Hijack(Gmp):
    """A third-party technique that takes a first-party name."""

    origin = "evil"


class EvilOther(Gmp):
    """The third party's own technique."""

    name = "evil.other"


def _module(name: str, *techniques: type) -> types.ModuleType:
    module = types.ModuleType(name)
    module.sconce_register_techniques = sconce.hookimpl(  # type: ignore[attr-defined]
        lambda register: [register(t()) for t in techniques])
    return module


class _Dist:
    def __init__(self, name: str) -> None:
        self.metadata = {"Name": name}
        self.version = "1.0"


class _EntryPoint:
    def __init__(self, name: str, dist: str, module: types.ModuleType) -> None:
        self.name, self.value, self.dist, self._module = name, module.__name__, _Dist(dist), module

    def load(self) -> types.ModuleType:
        return self._module


@pytest.mark.parametrize("third_party_first", [True, False])
def test_a_name_clash_keeps_the_first_party_and_both_packages(third_party_first, monkeypatch,
                                                              caplog) -> None:
    ours = _EntryPoint("prune", "sconce-prune", _module("fake_prune", Gmp, Channel))
    theirs = _EntryPoint("aaa-evil", "evil-plugin", _module("fake_evil", Hijack, EvilOther))
    found = [theirs, ours] if third_party_first else [ours, theirs]
    monkeypatch.setattr(metadata, "entry_points", lambda group: found)
    with caplog.at_level(logging.WARNING, logger="sconce.plugins"):
        techniques = registry().techniques
    assert techniques["prune.gmp"].origin == "sconce-prune"
    assert {"prune.gmp", "prune.channel", "evil.other"} <= set(techniques)
    assert "plugin 'aaa-evil': its technique 'prune.gmp' is refused" in caplog.text


@pytest.mark.parametrize("order", [("one", "two"), ("two", "one")])
def test_between_runtime_plugins_the_first_registration_wins(order, caplog, monkeypatch
                                                             ) -> None:
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    made = {"one": _module("one", Gmp, Channel), "two": _module("two", Hijack, EvilOther)}
    for name in order:
        sconce.register_plugin(made[name], name=name)
    with caplog.at_level(logging.WARNING, logger="sconce.plugins"):
        techniques = registry().techniques
    assert techniques["prune.gmp"].origin == ("sconce-prune" if order[0] == "one" else "evil")
    assert {"prune.gmp", "prune.channel", "evil.other"} <= set(techniques)
    assert f"plugin {order[1]!r}: its technique 'prune.gmp' is refused" in caplog.text


def test_a_plugin_cannot_take_a_builtin_dataset(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="sconce.plugins")
    plugin = types.SimpleNamespace(sconce_register_datasets=sconce.hookimpl(
        lambda register: (register("digits", lambda **kw: None),
                          register("mine", lambda **kw: None))))
    sconce.register_plugin(plugin, name="squatter")
    reg = registry()
    assert reg.origin[("datasets", "digits")] == "sconce.builtin.datasets"
    assert "mine" in reg.datasets
    assert "plugin 'squatter': its dataset 'digits' is refused" in caplog.text


# --- every mistake is one line ------------------------------------------------------------------
LABELS = textwrap.dedent("""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import sconce

    def _data(labels, **fields):
        images = torch.randn(len(labels), 1, 8, 8)
        loader = DataLoader(TensorDataset(images, labels), batch_size=4)
        return sconce.Data(train=loader, test=loader, **fields)

    def out_of_range(batch_size=4):
        return _data(torch.tensor([0, 1, 2, 10] * 4), num_classes=10)

    def negative(batch_size=4):
        return _data(torch.tensor([0, 1, -1, 3] * 4))

    def floating(batch_size=4):
        return _data(torch.tensor([0.0, 1.0, 2.5, 3.0] * 4))
""")


@pytest.mark.parametrize(("factory", "message"), [
    ("out_of_range", "must be class indices 0..9, found 10"),
    ("negative", "found -1"),
    ("floating", "torch.float32 values; classification needs integer class indices"),
])
def test_bad_labels_are_one_line(factory, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    (tmp_path / "badlabels.py").write_text(LABELS)
    code, _, err = run(["compress", "--model", "demo-cnn", "--data", f"badlabels:{factory}",
                        "--train-epochs", "1", "--out", "o"], capsys)
    assert code == 2 and message in one_error_line(err)


def test_a_label_out_of_range_while_training_is_a_data_error(loaders) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # the data has 4 classes
    with pytest.raises(DataError, match="not a class index of this model's 3 outputs"):
        sconce.train(model, loaders["train"], 1, progress=False)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: (f / "model.pt").unlink(), "model.pt' is missing"),
    (lambda f: (f / "model.pt").write_bytes(b"not a zip"), "model.pt' is damaged"),
    (lambda f: (f / "model.pt").write_bytes((f / "model.pt").read_bytes()[:500]), "is damaged"),
    (lambda f: (f / "model.json").write_text("[1, 2]"), "not a sconce model description"),
    (lambda f: (f / "model.json").write_text("{"), "model.json' is damaged"),
])
def test_a_damaged_folder_is_one_line(damage, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    folder = _saved_demo(tmp_path / "saved")
    damage(folder)
    code, _, err = run(["measure", "--model", str(folder)], capsys)
    assert code == 2 and message in one_error_line(err)


@pytest.mark.parametrize(("argv", "message"), [
    (["--train-epochs", "-3"], "Invalid value for '--train-epochs': -3.0 is not in the range"),
    (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range"),
    (["--finetune-epochs", "-1"], "Invalid value for '--finetune-epochs'"),
    (["--recipe", "r.toml"], "finetune_epochs must be a number, got 'two'"),
])
def test_bad_cli_values_are_one_line(argv, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.toml").write_text('[options]\nfinetune_epochs = "two"\n')
    code, _, err = run(["compress", *argv, "--out", "o"], capsys)
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "o" / "report.json").exists()


def test_a_failing_technique_marks_its_stage_and_keeps_the_earlier(loaders, tiny, tmp_path
                                                                    ) -> None:
    _register_test_techniques()
    result = _compress(tiny, loaders, recipe=["test.halve", "test.boom"], finetune_epochs=0,
                       out=tmp_path)
    assert result.failed is not None and result.failed.index == 2
    assert str(result.failed) == ("stage 2 (test.boom) failed: "
                                  "ValueError: the int8 engine is on fire")
    failed = result.report.stages[-1]
    assert failed.technique == "test.boom" and "on fire" in failed.notes["failed"]
    # the model is the first stage's (Boom's damage is not kept), and that is what is saved
    halved = {k: v * 0.5 if v.is_floating_point() and "running" not in k else v
              for k, v in tiny.state_dict().items()}
    loaded = sconce.load(tmp_path, model=type(tiny)())
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
        if key in ("conv.weight", "fc.weight"):
            assert torch.allclose(value, halved[key])
    report = json.loads((tmp_path / "report.json").read_text())
    assert "stage 2 (test.boom) failed" in report["run"]["failed"]
    assert [s["technique"] for s in json.loads((tmp_path / "model.json").read_text())["stages"]
            ] == ["test.halve"]


def test_cli_names_the_failed_stage_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    _register_test_techniques()
    code, out, err = run(["-q", "compress", "--model", "demo-cnn", "--technique", "test.halve",
                          "--technique", "test.boom", "--finetune-epochs", "0", "--out", "o"],
                         capsys)
    assert code == 1
    line = one_error_line(err)
    assert "stage 2 (test.boom) failed: ValueError: the int8 engine is on fire" in line
    assert (tmp_path / "o" / "model.pt").is_file() and "Original" in out


def test_files_get_the_users_umask(loaders, tiny, tmp_path) -> None:
    _register_test_techniques()
    old = os.umask(0o022)
    try:
        _compress(tiny, loaders, recipe=["test.halve"], finetune_epochs=0, out=tmp_path / "o")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "o").rglob("*") if p.is_file()]
    folders = [p for p in (tmp_path / "o").rglob("*") if p.is_dir()]
    assert {p.name for p in files} >= {"model.pt", "report.json", "stage.json"}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o755}
