"""The plugin: discovered through its entry point, works with sconce-core alone, the true-size
hook answers for its layers, and the CLI turns its mistakes into one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch
from sparse_helpers import sparsify_
from torch import nn

import sconce


def test_the_entry_point_registers_both_techniques() -> None:
    points = [ep for ep in metadata.entry_points(group="sconce") if ep.name == "sparse"]
    assert [ep.value for ep in points] == ["sconce_sparse.plugin"]
    kinds = {t.name: t.kind for t in sconce.list_techniques("sparse.*")}
    assert kinds == {"sparse.engine": "sparsify", "sparse.storage": "convert"}
    for name in kinds:
        sconce.get_technique(name).Config()  # every field has a default


def test_works_with_sconce_core_alone(tmp_path: Path) -> None:
    script = tmp_path / "alone.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        sys.modules["sconce_prune"] = None  # as if only sconce-core and sconce-sparse existed
        sys.modules["sconce_quant"] = None
        os.environ.pop("SCONCE_PLUGINS", None)
        import sconce
        from sconce.plugins import plugin_infos
        sconce.load_plugins()
        sparse = [i for i in plugin_infos() if i.name == "sparse"]
        assert sparse and not sparse[0].error, sparse
        assert "sparse.engine" in [t.name for t in sconce.list_techniques()]
        print("ok")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_the_size_metric_counts_compressed_bytes() -> None:
    model = sparsify_(nn.Sequential(nn.Linear(256, 256)), 0.9)
    example = torch.randn(1, 256)
    dense = sconce.measure(model, example_inputs=example, metrics=["size", "params"])
    from sconce.context import Context
    from sconce_sparse.config import StorageConfig
    from sconce_sparse.storage import SparseStorage

    stored = SparseStorage().apply(model, StorageConfig(), Context.for_inputs(example))
    sparse = sconce.measure(stored, example_inputs=example,
                            metrics=["size", "params", "nonzero_params", "sparsity"])
    assert sparse["params"] == dense["params"]
    assert abs(sparse["sparsity"] - 90.0) < 1.0
    buffers = sum(t.numel() * t.element_size() for t in stored.state_dict().values())
    assert sparse["size"] * 2**20 == buffers
    assert sparse["size"] < 0.15 * dense["size"]


def test_cli_turns_a_bad_format_into_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from sconce.cli import main

    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[[stage]]\ntechnique = "sparse.engine"\nformats = ["numba_csc"]\n')
    status = main(["compress", "--model", "demo", "--data", "digits", "--recipe", str(recipe),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2
    assert len(lines) == 1 and "unknown sparse format 'numba_csc'" in lines[0], err
