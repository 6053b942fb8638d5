"""The README's ten-line plugin runs as written: it registers, lists, and compresses."""

from __future__ import annotations

import re
import types
from pathlib import Path

from click.testing import CliRunner

import sconce
from sconce.cli import build_cli

from conftest import TinyNet

README = Path(__file__).resolve().parents[1] / "README.md"
ROOT_README = Path(__file__).resolve().parents[3] / "README.md"


def _example(readme: Path) -> str:
    match = re.search(r"<!-- plugin-example -->\n```python\n(.*?)```", readme.read_text(),
                      re.DOTALL)
    assert match, f"{readme} has no plugin example after <!-- plugin-example -->"
    return match.group(1)


def test_the_plugin_example_works_as_written(loaders) -> None:
    code = _example(README)
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) <= 12, "the example should stay about ten lines"
    plugin = types.ModuleType("acme_sconce")
    exec(compile(code, "acme_sconce.py", "exec"), plugin.__dict__)  # the README's own code
    sconce.register_plugin(plugin, name="acme")

    listed = CliRunner().invoke(build_cli(), ["techniques", "--json"])
    assert listed.exit_code == 0 and '"acme.zero_small"' in listed.output
    result = sconce.compress(TinyNet(), loaders, recipe=["acme.zero_small"],
                             finetune_epochs=1, metrics=["accuracy", "sparsity"],
                             progress=False, device="cpu")
    _, pruned = result.report.stages
    assert pruned.technique == "acme.zero_small" and "fine-tuned" in pruned.notes
    weights = [p for p in result.model.parameters() if p.dim() > 1]
    assert all(float((w == 0).float().mean()) >= 0.5 for w in weights)  # kept through it


def test_the_root_readme_shows_the_same_example() -> None:
    if ROOT_README.is_file():  # in the repository (not in an installed package)
        assert _example(ROOT_README) == _example(README)

