"""Every Python block of the root README runs as written (with tiny training budgets)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
# Only the training budgets shrink; each replaced text must be in the README as shown.
TINY = {
    'sconce.train(model, "fashion-mnist", epochs=3)':
        'sconce.train(model, "fashion-mnist", epochs=0.01)',
    "finetune_epochs=2,": "finetune_epochs=0.01,",
    "sconces.epochs = 5": "sconces.epochs = 1",
}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), flags=re.S)


def tiny(block: str) -> str:
    for text, replacement in TINY.items():
        block = block.replace(text, replacement)
    return block


def test_the_tiny_settings_still_match_the_readme() -> None:
    text = README.read_text("utf-8")
    assert all(key in text for key in TINY), [k for k in TINY if k not in text]


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    block = tiny(python_blocks()[index])
    env = {**os.environ, "SCONCE_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    if "sconces.compress()" in block:
        assert "Comparison Table" in done.stdout and "vs original" in done.stdout
        assert (tmp_path / "digits-gmp" / "report.md").is_file()
