"""Data: loaders from dicts, names and objects; shapes and classes read from the data."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.data import Data, split_batch
from sconce.datasets import fashion_mnist, read_idx
from sconce.errors import DataError


def test_the_original_readme_dict_of_loaders(loaders) -> None:
    data = Data.from_value(loaders)
    assert data.input_shape == (1, 8, 8)
    assert data.num_classes == 4
    held_out = len(data.val.dataset)
    assert held_out == 9 and len(data.train.dataset) == 96 - 9
    assert not set(data.val.dataset.indices) & set(data.train.dataset.indices)


def test_validation_split_is_seeded(loaders) -> None:
    first = Data.from_value(loaders).val.dataset.indices
    second = Data.from_value(loaders).val.dataset.indices
    assert first == second


def test_given_validation_is_kept(loaders) -> None:
    data = Data.from_value({"train": loaders["train"], "validation": loaders["test"],
                            "test": loaders["test"]})
    assert data.val is loaders["test"] and data.train is loaders["train"]


def test_unknown_split_and_wrong_types_are_clear(loaders) -> None:
    with pytest.raises(DataError, match="unknown data split 'trian'"):
        Data.from_value({"trian": loaders["train"]})
    with pytest.raises(DataError, match="wrap it in a torch.utils.data.DataLoader"):
        Data(train=loaders["train"].dataset)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no loaders"):
        Data()
    with pytest.raises(DataError, match="dataset name"):
        Data.from_value(42)  # type: ignore[arg-type]


def test_empty_dataset_is_a_clear_error() -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(DataError, match="empty"):
        Data(test=empty)


def test_example_inputs_concatenate_and_repeat(loaders) -> None:
    data = Data.from_value(loaders)
    assert data.example_inputs(40).shape == (40, 1, 8, 8)
    assert data.example_inputs(200).shape == (200, 1, 8, 8)


def test_split_batch_forms() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([1, 0])
    assert split_batch((x, y))[1] is y
    assert split_batch({"pixel_values": x, "labels": y})[1] is y
    assert split_batch(x)[1] is None
    with pytest.raises(DataError, match="cannot find the inputs"):
        split_batch({"foo": x})


def test_digits_dataset() -> None:
    data = sconce.get_data("digits", batch_size=32)
    assert (data.input_shape, data.num_classes) == ((1, 8, 8), 10)
    sizes = [len(data.train.dataset), len(data.val.dataset), len(data.test.dataset)]
    assert sum(sizes) == 1797 and sizes[2] == 359
    assert data.train.batch_size == 32


def _write_idx(path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def test_fashion_mnist_reader_on_small_idx_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 60), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 255, (count, 28, 28), dtype=np.uint8), 0x08)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz",
                   (np.arange(count) % 10).astype(np.uint8), 0x08)
    data = fashion_mnist(root=tmp_path, val_size=10, batch_size=8)
    assert [len(data.train.dataset), len(data.val.dataset), len(data.test.dataset)] == [50, 10, 20]
    assert data.input_shape == (1, 28, 28)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist()[:3] == [0, 1, 2]


def test_fashion_mnist_missing_names_the_apt_package(tmp_path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(root=tmp_path / "nowhere")


def test_truncated_idx_file_is_detected(tmp_path) -> None:
    path = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_registered_name_goes_through_the_registry() -> None:
    assert isinstance(sconce.get_data("digits"), Data)
    with pytest.raises(DataError, match=r"sconce.get_data\('digits'\)"):
        Data.from_value("digits")  # the data layer knows no registry
