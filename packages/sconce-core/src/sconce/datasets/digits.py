"""scikit-learn's 8x8 handwritten digits (1,797 real images, shipped inside scikit-learn).

Example:
    >>> data = digits()  # doctest: +SKIP
    >>> len(data.train.dataset), len(data.val.dataset), len(data.test.dataset)  # doctest: +SKIP
    (1258, 179, 360)
"""

from __future__ import annotations

import torch

from sconce.data import Data
from sconce.datasets._splits import loader, seeded_permutation
from sconce.errors import DataError


def digits(*, batch_size: int = 64, seed: int = 0) -> Data:
    """Digits as 1x8x8 float images, standardised; seeded 70/10/20 train/val/test split.

    Args:
        batch_size: loader batch size.
        seed: the split's seed (the same split on every machine).

    Raises:
        DataError: when scikit-learn is not installed (it is the ``digits`` extra).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the 'digits' dataset needs scikit-learn: "
                        "pip install 'sconce-core[digits]'") from None
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = seeded_permutation(len(labels), seed)
    n_test, n_val = round(0.2 * len(order)), round(0.1 * len(order))
    test_idx, val_idx = order[:n_test], order[n_test:n_test + n_val]
    train_idx = order[n_test + n_val:]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return Data(
        train=loader(images[train_idx], labels[train_idx], batch_size, shuffle=True),
        val=loader(images[val_idx], labels[val_idx], batch_size, shuffle=False),
        test=loader(images[test_idx], labels[test_idx], batch_size, shuffle=False),
        name="digits", num_classes=10, input_shape=(1, 8, 8),
    )
