"""A third-party plugin, pip-installed from a temporary package, is discovered through the
`sconce` entry-point group; a broken one is skipped without breaking the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_MODULE = '''
"""A third-party sconce plugin in ten lines."""
import torch
import sconce


class ZeroSmall(sconce.Technique):
    """Zero every weight whose magnitude is below a threshold."""
    name, kind, Config = "acme.zero_small", "prune", sconce.PruneConfig

    def apply(self, model, config, ctx):
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    cut = param.abs().flatten().kthvalue(max(1, int(param.numel() * config.sparsity))).values
                    param.mul_(param.abs() > cut)
        return model


@sconce.hookimpl
def sconce_register_techniques(register):
    register(ZeroSmall())
'''


def _package(root: Path, dist: str, module: str, source: str) -> Path:
    folder = root / dist
    folder.mkdir()
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points.sconce]
        {dist.split("-")[-1]} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two pip-installed plugins: a working one and one that fails to import."""
    root = tmp_path_factory.mktemp("plugins")
    good = _package(root, "sconce-acme", "sconce_acme", PLUGIN_MODULE)
    broken = _package(root, "sconce-broken", "sconce_broken",
                      "raise ImportError('this plugin needs a library that is not installed')\n")
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(good), str(broken)],
        check=True, capture_output=True, text=True,
    )
    return target


def _sconce(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCONCE_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env["SCONCE_NO_PROGRESS"] = "1"
    env.pop("SCONCE_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "sconce.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)


def test_installed_plugin_shows_in_plugins_and_techniques(site: Path) -> None:
    plugins = _sconce(site, "plugins", "--json")
    assert plugins.returncode == 0, plugins.stderr
    infos = {info["name"]: info for info in json.loads(plugins.stdout)}
    assert infos["acme"]["distribution"] == "sconce-acme"
    assert infos["acme"]["version"] == "1.2.3"
    assert infos["acme"]["hooks"] == ["sconce_register_techniques"]
    assert "needs a library that is not installed" in infos["broken"]["error"]

    techniques = _sconce(site, "techniques", "--json")
    rows = {row["name"]: row for row in json.loads(techniques.stdout)}
    assert rows["acme.zero_small"]["package"] == "sconce-acme"
    assert rows["acme.zero_small"]["config"] == [
        {"name": "sparsity", "type": "float", "default": 0.5}]


def test_compress_runs_the_plugin_technique(site: Path, tmp_path: Path) -> None:
    result = _sconce(site, "compress", "--technique", "acme.zero_small", "--finetune-epochs", "0",
                     "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    pruned = report["stages"][1]
    assert pruned["technique"] == "acme.zero_small"
    assert pruned["values"]["sparsity"] > 45.0
    assert "failed to load and is skipped" in result.stderr  # the broken plugin, logged


def test_a_broken_plugin_does_not_break_help(site: Path) -> None:
    result = _sconce(site, "--help")
    assert result.returncode == 0
    assert "compress" in result.stdout
