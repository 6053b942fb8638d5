"""English text that works offline, tokenized for language models: calibration and
evaluation text that never overlap.

The evaluation text is the GNU GPL version 3 (``/usr/share/common-licenses/GPL-3``, shipped by
Debian's ``base-files``). The calibration text is every other licence text there, except the
GNU family (GPL, LGPL, AGPL, which share passages with the GPL-3), followed by the docstrings
of the Python standard library (their prose paragraphs, read from its source files with
:mod:`ast`; nothing is imported), as much as the calibration samples need. Texts are split
into paragraphs; a paragraph that also occurs in the evaluation text is dropped from the
calibration text.

- :func:`causal_lm_text`: fixed-length token windows (``(ids,)`` batches) for causal LMs.
- :func:`sentence_text`: padded sentences (``((ids, mask),)`` batches) for encoders.

The ``tokenizer`` is any callable that maps a string to token ids: a Hugging Face tokenizer
(its ``input_ids``), or a plain function returning a list of ints.

Example:
    >>> data = causal_lm_text(lambda text: [ord(c) % 97 for c in text], length=64,
    ...                       calibration_samples=4)
    >>> data.calibration.dataset.tensors[0].shape
    torch.Size([4, 64])
    >>> first = next(iter(data.test))[0]
    >>> first.shape[1]
    64
"""

from __future__ import annotations

import ast
import logging
import re
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sconce.data import Data
from sconce.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["LICENSES", "causal_lm_text", "english_text", "sentence_text", "sentences"]

LICENSES = Path("/usr/share/common-licenses")
"""Where Debian keeps the common licence texts."""
EVALUATION_TEXT = "GPL-3"
_GNU = ("GPL", "LGPL", "AGPL")

Tokenizer = Callable[[str], Any]


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="ignore")


def _prose(paragraph: str) -> bool:
    """Whether a docstring paragraph reads as English prose (not code, not a table)."""
    if ">>>" in paragraph or len(paragraph.split()) < 8:
        return False
    letters = sum(c.isalpha() or c == " " for c in paragraph)
    return letters >= 0.85 * len(paragraph)


def _docstrings() -> Iterator[str]:
    """Module, class and function docstrings of the standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"test", "tests", "site-packages", "idle_test", "lib2to3", "turtledemo"}:
            continue
        try:
            tree = ast.parse(_read(path))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    yield doc


def english_text(part: str, *, min_chars: int = 0) -> str:
    """The evaluation text, or at least ``min_chars`` of calibration text (paragraphs joined
    by blank lines); the two never share a paragraph.

    Args:
        part: ``"evaluation"`` or ``"calibration"``.
        min_chars: for calibration: add standard-library docstrings until there is this much.

    Raises:
        DataError: ``part`` is unknown, or the licence texts are not installed.

    Example:
        >>> len(english_text("evaluation")) > 30_000
        True
        >>> evaluation = set(english_text("evaluation").split("\\n\\n"))
        >>> calibration = english_text("calibration", min_chars=100_000).split("\\n\\n")
        >>> any(p in evaluation for p in calibration)
        False
    """
    held_out = LICENSES / EVALUATION_TEXT
    if not held_out.is_file():
        raise DataError(f"the English text needs {held_out} (Debian's base-files package)")
    evaluation = _paragraphs(_read(held_out))
    if part == "evaluation":
        return "\n\n".join(evaluation)
    if part != "calibration":
        raise DataError(f"part must be 'evaluation' or 'calibration', got {part!r}")
    seen = set(evaluation)
    chosen: list[str] = []
    size = 0

    def add(paragraph: str) -> None:
        nonlocal size
        if paragraph not in seen:
            seen.add(paragraph)
            chosen.append(paragraph)
            size += len(paragraph) + 2

    files = sorted({p.resolve() for p in LICENSES.iterdir() if p.is_file()})
    for path in files:
        if not path.name.startswith(_GNU):
            for paragraph in _paragraphs(_read(path)):
                add(paragraph)
    if size < min_chars:
        for doc in _docstrings():
            for paragraph in _paragraphs(doc):
                if _prose(paragraph):
                    add(paragraph)
            if size >= min_chars:
                break
    return "\n\n".join(chosen)


def _token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    encoded = tokenizer(text)
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if isinstance(encoded, torch.Tensor):
        encoded = encoded.reshape(-1).tolist()
    return [int(i) for i in encoded]


def _windows(ids: list[int], length: int, count: int | None) -> torch.Tensor:
    usable = len(ids) // length
    if count is not None:
        usable = min(usable, count)
    return torch.tensor(ids[:usable * length], dtype=torch.long).reshape(usable, length)


def causal_lm_text(tokenizer: Tokenizer, *, length: int = 512, calibration_samples: int = 128,
                   evaluation_samples: int | None = None, batch_size: int = 8) -> Data:
    """Token windows for a causal LM: calibration from :func:`english_text`'s calibration
    part, test (and validation) from its evaluation part, as consecutive ``length``-token
    windows that never overlap.

    Args:
        tokenizer: text -> token ids.
        length: tokens per window.
        calibration_samples: calibration windows (also the fine-tuning data).
        evaluation_samples: test windows (None: every full window of the evaluation text).
        batch_size: windows per batch.

    Raises:
        DataError: the texts are too short for one window.
    """
    evaluation = _windows(_token_ids(tokenizer, english_text("evaluation")), length,
                          evaluation_samples)
    # about 4 characters per token; read on until the windows are there
    chars = 5 * length * calibration_samples
    while True:
        ids = _token_ids(tokenizer, english_text("calibration", min_chars=chars))
        if len(ids) >= length * calibration_samples or chars > 50 * length * calibration_samples:
            break
        chars *= 2
    calibration = _windows(ids, length, calibration_samples)
    if not len(evaluation) or not len(calibration):
        raise DataError(f"the offline text is too short for one window of {length} tokens")
    if len(calibration) < calibration_samples:
        logger.warning("only %d calibration windows of %d tokens", len(calibration), length)

    def loader(windows: torch.Tensor) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(TensorDataset(windows), batch_size=batch_size)

    return Data(train=loader(calibration), val=loader(evaluation), test=loader(evaluation),
                calibration=loader(calibration), name="english-text",
                input_shape=(length,), info={"calibration_windows": len(calibration),
                                             "evaluation_windows": len(evaluation)})


def sentences(text: str, *, min_chars: int = 40) -> list[str]:
    """The sentences of ``text`` with at least ``min_chars`` characters.

    Example:
        >>> sentences("Short. This sentence is long enough to be kept here.", min_chars=20)
        ['This sentence is long enough to be kept here.']
    """
    found = []
    for paragraph in _paragraphs(text):
        for sentence in re.split(r"(?<=[.!?;])\s+(?=[A-Z(\"'])", paragraph):
            if len(sentence) >= min_chars:
                found.append(sentence)
    return found


class _Sentences(Dataset[tuple[tuple[torch.Tensor, torch.Tensor]]]):
    """Padded token ids and attention masks, one sentence per item: ``((ids, mask),)``."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.ids, self.mask = ids, mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        return ((self.ids[index], self.mask[index]),)


def _encode(tokenizer: Tokenizer, texts: list[str], length: int, pad: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(texts), length), pad, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = _token_ids(tokenizer, text)[:length]
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    return ids, mask


def sentence_text(tokenizer: Tokenizer, *, max_length: int = 128,
                  calibration_samples: int = 128, evaluation_samples: int = 256,
                  batch_size: int = 16, pad_id: int = 0) -> Data:
    """Sentences for an encoder: calibration from the calibration text, test (and validation)
    from the evaluation text; each padded (or cut) to ``max_length`` tokens with a mask.

    The tokenizer should add the model's special tokens (Hugging Face tokenizers do).

    Example:
        >>> data = sentence_text(lambda text: [1 + ord(c) % 50 for c in text], max_length=16,
        ...                      calibration_samples=8, evaluation_samples=8)
        >>> (ids, mask), = next(iter(data.test))
        >>> ids.shape, mask.shape
        (torch.Size([8, 16]), torch.Size([8, 16]))
    """
    evaluation = sentences(english_text("evaluation"))[:evaluation_samples]
    calibration = sentences(english_text("calibration", min_chars=200 * calibration_samples))
    calibration = calibration[:calibration_samples]
    if not evaluation or not calibration:
        raise DataError("the offline text holds no sentences")

    def loader(texts: list[str]) -> DataLoader[tuple[tuple[torch.Tensor, torch.Tensor]]]:
        return DataLoader(_Sentences(*_encode(tokenizer, texts, max_length, pad_id)),
                          batch_size=batch_size)

    return Data(train=loader(calibration), val=loader(evaluation), test=loader(evaluation),
                calibration=loader(calibration), name="english-sentences",
                input_shape=(max_length,), num_classes=None)
