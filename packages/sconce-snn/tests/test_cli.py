"""The command line with a snnTorch model file."""

from __future__ import annotations

import json
from pathlib import Path

from sconce.cli import main

HELPERS = Path(__file__).with_name("snn_helpers.py")


def test_compress_an_snntorch_model_file(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["-q", "compress", "--model", f"{HELPERS}:Net", "--data",
                 f"{HELPERS}:tiny_data", "--train-epochs", "1", "--technique",
                 "snn.int8_weights", "--technique", "snn.state_quant", "--finetune-epochs",
                 "0.25", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Spike rate" in captured.out and "SynOps" in captured.out
    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["metrics"]]
    assert {"spike_rate", "synops", "energy", "accuracy"} <= set(names)
    assert [s["technique"] for s in report["stages"]] == [None, "snn.int8_weights",
                                                          "snn.state_quant"]
    measure = ["-q", "measure", "--model", str(out), "--data", f"{HELPERS}:tiny_data",
               "--metric", "spike_rate", "--json"]
    assert main(measure) == 2  # the saved folder names a .py file: code runs only if trusted
    capsys.readouterr()
    assert main([*measure, "--trust-code"]) == 0
    assert json.loads(capsys.readouterr().out)["values"]["spike_rate"] > 0


def test_an_unsupported_snntorch_model_is_one_line(tmp_path, capsys) -> None:
    model_file = tmp_path / "bad.py"
    model_file.write_text(
        "import snntorch as snn\nfrom torch import nn\n"
        "def Bad(**_):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4), snn.SLSTM(4, 4))\n")
    code = main(["compress", "--model", f"{model_file}:Bad", "--data", f"{HELPERS}:tiny_data",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "2 (SLSTM)" in err and len(err.strip().splitlines()) == 1
