"""The built-in demo with every plugin installed: Original / Pruned / Quantized."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_with_all_plugins_shows_pruned_and_quantized_columns(tmp_path: Path) -> None:
    env = {**os.environ, "SCONCE_NO_PROGRESS": "1"}
    env.pop("SCONCE_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("SCONCE_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "sconce.cli", "compress"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for column in ("Original", "Pruned", "Quantized"):
        assert column in done.stdout
    report = json.loads((tmp_path / "sconce-out" / "report.json").read_text())
    titles = [stage["title"] for stage in report["stages"]]
    assert titles == ["Original", "Pruned", "Quantized"]
    original, pruned, quantized = (stage["values"] for stage in report["stages"])
    assert pruned["params"] < original["params"]
    assert quantized["size"] < pruned["size"] / 3
    assert quantized["accuracy"] > original["accuracy"] - 3.0
