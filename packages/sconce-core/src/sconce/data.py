"""The data a compression run uses: train / val / test / calibration loaders.

:class:`Data` accepts what users already have: ``DataLoader`` objects, the original sconce
README's ``{"train": loader, "test": loader}`` dict, or the name of a registered dataset
(``"digits"``, ``"fashion-mnist"``). Input shape and class count are read from the data.

When no validation loader is given, a fixed, seeded 10% of the training set (at most 5,000
samples) is held out for the decisions techniques take (sensitivity analysis, mixed
precision), so the test set only ever measures.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.randn(200, 1, 8, 8), torch.arange(200) % 10)
    >>> data = Data.from_value({"train": DataLoader(ds, batch_size=20), "test": DataLoader(ds)})
    >>> data.input_shape, data.num_classes, len(data.val.dataset)
    ((1, 8, 8), 10, 20)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from sconce.errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test", "calibration")
_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
    "calibration": "calibration", "calib": "calibration",
}
_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids")
_TARGET_KEYS = ("label", "labels", "target", "targets", "y")


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """Split a batch into ``(inputs, targets)``; targets are ``None`` for unlabelled data.

    Accepts ``(x, y)`` tuples/lists, dicts with common key names, or a bare tensor.

    Example:
        >>> split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1]
        tensor([0, 1])
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        return tuple(batch[:-1]), batch[-1]
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        targets = next((batch[k] for k in _TARGET_KEYS if k in batch), None)
        if inputs is None:
            raise DataError(
                f"cannot find the inputs in a batch with keys {sorted(batch)}; "
                f"name them one of {', '.join(_INPUT_KEYS)}"
            )
        return inputs, targets
    raise DataError(
        f"a batch of type {type(batch).__name__} is not understood; "
        "yield (inputs, targets) tuples or dicts"
    )


def _first_tensor(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (tuple, list)) and inputs and isinstance(inputs[0], torch.Tensor):
        return inputs[0]
    raise DataError(f"inputs of type {type(inputs).__name__} are not a tensor")


def _take(inputs: Any, count: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[:count]
    return type(inputs)(t[:count] for t in inputs)


@dataclass
class Data:
    """Loaders for each split, plus what is known about the samples.

    Attributes:
        train, val, test, calibration: DataLoaders (any may be ``None``).
        name: the registered name this came from, if any.
        num_classes: class count; read from the data when not given.
        input_shape: shape of one input sample; read from the data when not given.
    """

    train: DataLoader[Any] | None = None
    val: DataLoader[Any] | None = None
    test: DataLoader[Any] | None = None
    calibration: DataLoader[Any] | None = None
    name: str = ""
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in SPLITS:
            loader = getattr(self, split)
            if loader is not None and not isinstance(loader, DataLoader):
                raise DataError(
                    f"data[{split!r}] is a {type(loader).__name__}; wrap it in a "
                    "torch.utils.data.DataLoader"
                )
        if self.train is None and self.test is None and self.val is None:
            raise DataError("data has no loaders; give at least 'train' or 'test'")
        if self.val is None and self.train is not None:
            self._hold_out_validation()
        if self.input_shape is None:
            self.input_shape = tuple(_first_tensor(self.example_inputs(1)).shape[1:])
        if self.num_classes is None:
            self.num_classes = _infer_num_classes(self)

    @classmethod
    def from_value(cls, value: Data | Mapping[str, Any]) -> Data:
        """Build ``Data`` from a Data or a dict of loaders keyed by split.

        Dataset *names* (``"digits"``) are looked up in the plugin registry by
        :func:`sconce.get_data`, which the public entry points (``compress``, ``train``,
        ``measure``) call; this layer knows no registry.

        Raises:
            DataError: an unknown split key, or a value that is neither.

        Example:
            >>> Data.from_value({"training": data.train}).train is data.train  # doctest: +SKIP
            True
        """
        if isinstance(value, Data):
            return value
        if isinstance(value, Mapping):
            loaders: dict[str, Any] = {}
            for key, loader in value.items():
                split = _ALIASES.get(str(key).lower())
                if split is None:
                    raise DataError(
                        f"unknown data split {key!r}; use train, val, test or calibration"
                    )
                loaders[split] = loader
            return cls(**loaders)
        if isinstance(value, str):
            raise DataError(f"{value!r} is a dataset name; look it up with "
                            f"sconce.get_data({value!r})")
        raise DataError(
            f"data must be a sconce.Data, a dict of DataLoaders or a dataset name, "
            f"got {type(value).__name__}"
        )

    def loader(self, split: str) -> DataLoader[Any]:
        """The loader for ``split``; calibration falls back to train, val to test.

        Example:
            >>> data.loader("calibration") is data.train  # doctest: +SKIP
            True
        """
        split = _ALIASES.get(split, split)
        loader: DataLoader[Any] | None = getattr(self, split, None)
        if loader is None and split == "calibration":
            loader = self.train if self.train is not None else self.val
        if loader is None and split == "val":
            loader = self.test
        if loader is None:
            raise DataError(f"this run needs a {split!r} loader, and the data has none")
        return loader

    def example_inputs(self, batch_size: int = 1) -> Any:
        """The first ``batch_size`` inputs of the test (or val, or train) split.

        Several batches are concatenated when one batch is smaller than ``batch_size``.
        """
        loader = next(split for split in (self.test, self.val, self.train) if split is not None)
        chunks: list[Any] = []
        have = 0
        for batch in loader:
            inputs, _ = split_batch(batch)
            chunks.append(inputs)
            have += _first_tensor(inputs).shape[0]
            if have >= batch_size:
                break
        if not chunks:
            raise DataError("the data loader yielded no batches; is the dataset empty?")
        if len(chunks) == 1:
            joined = chunks[0]
        elif isinstance(chunks[0], torch.Tensor):
            joined = torch.cat(chunks)
        else:
            joined = type(chunks[0])(torch.cat(parts) for parts in zip(*chunks, strict=True))
        if have < batch_size:  # repeat a small dataset up to the asked batch
            repeats = -(-batch_size // have)
            if isinstance(joined, torch.Tensor):
                joined = joined.repeat(repeats, *[1] * (joined.dim() - 1))
            else:
                joined = type(joined)(t.repeat(repeats, *[1] * (t.dim() - 1)) for t in joined)
        return _take(joined, batch_size)

    def batches(self, split: str, max_samples: int | None = None) -> Iterator[Any]:
        """Iterate the batches of ``split``, stopping once ``max_samples`` were yielded.

        Example:
            >>> sum(len(split_batch(b)[0]) for b in data.batches("test", 5))  # doctest: +SKIP
            5
        """
        seen = 0
        for batch in self.loader(split):
            yield batch
            seen += _first_tensor(split_batch(batch)[0]).shape[0]
            if max_samples is not None and seen >= max_samples:
                return

    def _hold_out_validation(self) -> None:
        assert self.train is not None
        dataset = self.train.dataset
        if not isinstance(dataset, Sized):
            logger.info("no validation loader and the train set has no length; "
                        "decisions will use the test split")
            return
        size = len(dataset)
        if size < 50:
            return
        held = min(5000, max(1, size // 10))
        order = torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist()
        val_idx, train_idx = order[:held], order[held:]
        self.val = _like(self.train, Subset(dataset, val_idx), shuffle=False)
        shuffle = isinstance(self.train.sampler, RandomSampler)
        self.train = _like(self.train, Subset(dataset, train_idx), shuffle=shuffle)
        logger.info("held out %d of %d training samples for validation (seeded)", held, size)


def _like(loader: DataLoader[Any], dataset: Dataset[Any], *, shuffle: bool
          ) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=loader.batch_size or 1,
        shuffle=shuffle,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def _dataset_targets(dataset: Any) -> torch.Tensor | None:
    if isinstance(dataset, Subset):
        inner = _dataset_targets(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "tensors") and len(dataset.tensors) >= 2:
        targets = dataset.tensors[-1]
    if targets is None:
        return None
    return torch.as_tensor(targets)


def _infer_num_classes(data: Data) -> int | None:
    for split in ("train", "test", "val"):
        loader = getattr(data, split)
        if loader is None:
            continue
        dataset = loader.dataset
        classes = getattr(dataset, "classes", None) or getattr(dataset, "num_classes", None)
        if isinstance(classes, int):
            return classes
        if classes is not None:
            return len(classes)
        targets = _dataset_targets(dataset)
        if targets is None:
            targets_list = [split_batch(b)[1] for b in loader]
            if any(t is None for t in targets_list):
                return None
            targets = torch.cat([torch.as_tensor(t).reshape(-1) for t in targets_list])
        if targets.dtype.is_floating_point or targets.numel() == 0:
            return None
        return int(targets.max()) + 1
    return None
