"""Fashion-MNIST from IDX gzip files (by default those of Debian's ``dataset-fashion-mnist``).

Example:
    >>> data = fashion_mnist()  # doctest: +SKIP
    >>> len(data.train.dataset), len(data.val.dataset), len(data.test.dataset)  # doctest: +SKIP
    (55000, 5000, 10000)
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sconce.data import Data
from sconce.datasets._splits import loader, seeded_permutation
from sconce.errors import DataError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_MEAN, _STD = 0.2860, 0.3530
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    code: np.dtype(kind) for code, kind in
    {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.items()}


def read_idx(path: str | Path) -> np.ndarray[Any, Any]:
    """Read an IDX file (gzip-compressed or not) into a NumPy array.

    Example:
        >>> labels = DEFAULT_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
        >>> read_idx(labels).shape  # doctest: +SKIP
        (10000,)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{str(path)!r} is not an IDX file")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{str(path)!r} is truncated: expected {shape}, got {data.size} values")
    return data.reshape(shape)


def fashion_mnist(
    *, root: str | Path | None = None, batch_size: int = 128, val_size: int = 5000, seed: int = 0
) -> Data:
    """Fashion-MNIST as normalised 1x28x28 images: 55k train, 5k seeded val, 10k test.

    Args:
        root: folder holding the four ``*-ubyte.gz`` files; default ``$SCONCE_FASHION_MNIST``
            or the Debian package's folder.
        batch_size: loader batch size.
        val_size: training images held out for validation.
        seed: the validation split's seed.

    Raises:
        DataError: when the files are missing (the message gives the apt command).
    """
    folder = Path(root or os.environ.get("SCONCE_FASHION_MNIST") or DEFAULT_FASHION_MNIST_DIR)
    paths = {key: folder / name for key, name in _FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {str(folder)!r} (missing {Path(missing[0]).name}); "
            "install it with `apt-get install dataset-fashion-mnist` or pass root=/ set "
            "SCONCE_FASHION_MNIST to a folder with the IDX .gz files"
        )

    def images(key: str) -> torch.Tensor:
        array = read_idx(paths[key]).astype(np.float32) / 255.0
        return ((torch.from_numpy(array) - _MEAN) / _STD).unsqueeze(1)

    def labels(key: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(paths[key]).astype(np.int64))

    train_x, train_y = images("train_images"), labels("train_labels")
    order = seeded_permutation(len(train_y), seed)
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Data(
        train=loader(train_x[train_idx], train_y[train_idx], batch_size, shuffle=True),
        val=loader(train_x[val_idx], train_y[val_idx], batch_size, shuffle=False),
        test=loader(images("test_images"), labels("test_labels"), batch_size, shuffle=False),
        name="fashion-mnist", num_classes=10, input_shape=(1, 28, 28),
    )
