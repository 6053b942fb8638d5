"""The README's "Coming from Torch-Pruning" and ChannelPruner examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"### {section}")
    end = text.find("\n### ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.mark.parametrize("section", ["Python API: `ChannelPruner`", "Coming from Torch-Pruning"])
def test_readme_examples_run(section: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _python_blocks(section)
    assert blocks, f"no python example under {section!r}"
    for block in blocks:
        exec(compile(block, f"README:{section}", "exec"), {})
    printed = capsys.readouterr().out
    for comment in re.findall(r"# (\[\(.*\)\])$", "".join(blocks), flags=re.M):
        assert comment in printed  # the outputs quoted in the README are the real ones
