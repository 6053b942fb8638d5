"""The `sconce` command: the demo, listings, and one clean line for each user mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sconce.cli import main

HERE = Path(__file__).parent


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compress", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["compress", "--model", "missing_file.py:Net"], "model file 'missing_file.py' does not exist"),
        (["compress", "--model", "no_such_pkg.mod:factory"], "cannot import module 'no_such_pkg.mod'"),
        (["compress", "--technique", "prune.gmq"], "unknown technique 'prune.gmq'"),
        (["compress", "--recipe", "missing.toml"], "recipe file 'missing.toml' does not exist"),
        (["compress", "--data", "no-such-data"], "unknown dataset 'no-such-data'"),
        (["compress", "--max-accuracy-drop", "-1"], "max_accuracy_drop must be a number >= 0"),
        (["compress", "--device", "cuda:7"] if not __import__("torch").cuda.is_available()
         else ["compress", "--device", "nonsense"], "device"),
        (["measure", "--model", "demo", "--data", "fashion-mnist"],
         "the demo model is trained for digits"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch
                                                  ) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sconce: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err + out


def test_shape_mismatch_between_dataset_and_model(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def wide():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))\n")
    code, _, err = run(["compress", "--model", "mynets.py:wide", "--data", "digits",
                        "--technique", "x.y"], capsys)
    assert code == 2 and "unknown technique 'x.y'" in err
    code, _, err = run(["compress", "--model", "mynets.py:wide", "--data", "digits"], capsys)
    assert code == 2
    assert "cannot run on inputs of shape (2, 1, 8, 8)" in err and len(err.strip().splitlines()) == 1


def test_class_count_mismatch_is_a_clear_error(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n"
        "def three():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n")
    code, _, err = run(["measure", "--model", "nets.py:three", "--data", "digits"], capsys)
    assert code == 2 and "outputs 3 classes but the data has 10" in err


def test_the_demo_without_plugins_says_what_to_install(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    code, _, err = run(["compress", "--out", "demo-out"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "sconce: error: no compression technique is installed to plan with; "
        "pip install sconce-prune sconce-quant, or give a recipe"]


def test_log_json_writes_one_json_object_per_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    code, _, err = run(["--log-json", "compress", "--model", "demo-cnn", "--train-epochs",
                        "0.05", "--out", "out"], capsys)
    assert code == 2  # no technique to plan with: the error stays one plain line
    lines = err.strip().splitlines()
    events = [json.loads(line) for line in lines[:-1]]
    assert events and all(set(e) >= {"time", "level", "logger", "message"} for e in events)
    assert any(e["logger"] == "sconce.cli" and e["message"].startswith("training the model")
               for e in events)
    assert lines[-1].startswith("sconce: error: no compression technique is installed")


def test_listings(capsys) -> None:
    code, out, _ = run(["plugins", "--json"], capsys)
    assert code == 0 and "sconce.builtin.metrics" in out
    code, out, _ = run(["techniques", "--json"], capsys)
    assert code == 0 and isinstance(json.loads(out), list)
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "resnet18" in out
    code, out, _ = run(["datasets"], capsys)
    assert code == 0 and "fashion-mnist" in out


def test_measure_json(capsys) -> None:
    code, out, _ = run(["measure", "--metric", "params", "--metric", "macs", "--json"], capsys)
    assert code == 0
    values = json.loads(out)["values"]
    assert values["params"] > 0 and values["macs"] > 0


def test_measure_of_a_saved_folder(capsys, tmp_path, monkeypatch, round_half) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCONCE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert run(["compress", "--out", "o"], capsys)[0] == 0
    code, out, _ = run(["measure", "--model", "o", "--metric", "accuracy", "--json"], capsys)
    assert code == 0 and json.loads(out)["values"]["accuracy"] > 95.0


def test_help_works_as_a_subprocess() -> None:
    result = subprocess.run([sys.executable, "-m", "sconce.cli", "--help"], capture_output=True,
                            text=True, env={**os.environ, "SCONCE_NO_PROGRESS": "1"})
    assert result.returncode == 0 and "compress" in result.stdout
