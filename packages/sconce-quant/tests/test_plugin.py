"""The plugin: discovered through its entry point, works with sconce-core alone, and the
demo (``sconce compress`` with no arguments) quantizes with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import sconce
from sconce.pipeline import default_recipe


def test_the_entry_point_registers_every_technique() -> None:
    points = [ep for ep in metadata.entry_points(group="sconce") if ep.name == "quant"]
    assert [ep.value for ep in points] == ["sconce_quant.plugin"]
    names = [t.name for t in sconce.list_techniques("quant.*")]
    assert names == ["quant.dynamic", "quant.int8", "quant.qat", "quant.weight_only"]
    for name in names:
        technique = sconce.get_technique(name)
        assert technique.kind == "quantize"
        technique.Config()  # every field has a default


def test_the_default_recipe_quantizes_with_int8() -> None:
    assert [stage.technique for stage in default_recipe().stages] == ["quant.int8"]


def test_works_without_sconce_prune(tmp_path: Path) -> None:
    script = tmp_path / "alone.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        sys.modules["sconce_prune"] = None  # as if only sconce-core and sconce-quant were installed
        os.environ.pop("SCONCE_PLUGINS", None)
        import sconce
        from sconce.plugins import plugin_infos
        sconce.load_plugins()
        quant = [i for i in plugin_infos() if i.name == "quant"]
        assert quant and not quant[0].error, quant
        assert "quant.int8" in [t.name for t in sconce.list_techniques()]
        print("ok")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


@pytest.mark.slow
def test_the_demo_runs_with_quant_alone(tmp_path: Path) -> None:
    from sconce.cli import cli

    result = CliRunner().invoke(cli, ["compress", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    table = result.output.split("Accuracy")[0]  # the table's two header lines
    assert "Original" in table and "Quantized" in table and "Pruned" not in table
    assert "int8 engine" in result.output
    model = sconce.load(tmp_path)
    assert model is not None
