"""Search spaces: shapes of sampled members, declared families, validation."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import sconce
from sconce_nas import ElasticCNN, SearchSpace, declare_family, known_families
from sconce_nas.elastic import DEFAULT_STAGES
from sconce_nas.space import space_from_record


@pytest.mark.parametrize("channels, size, classes", [(1, 28, 10), (3, 32, 100), (3, 64, 7),
                                                     (2, 9, 3)])
def test_sampled_members_run_with_the_right_shapes(channels, size, classes):
    space = ElasticCNN(in_channels=channels, image_size=size, num_classes=classes)
    rng = random.Random(0)
    for choice in [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(4))]:
        model = space.build(choice).eval()
        with torch.no_grad():
            out = model(torch.randn(3, channels, size, size))
        assert out.shape == (3, classes)


def test_members_grow_with_their_options():
    space = ElasticCNN(in_channels=1, image_size=28, num_classes=10)
    small = sum(p.numel() for p in space.build(space.smallest()).parameters())
    large = sum(p.numel() for p in space.build(space.largest()).parameters())
    assert small < large
    assert len(space.build(space.largest()).stages[0]) == DEFAULT_STAGES[0][1]
    assert len(space.build(space.smallest()).stages[0]) == 1


def test_for_data_reads_shape_and_classes(data):
    space = ElasticCNN.for_data(data)
    assert (space.in_channels, space.image_size, space.num_classes) == (1, 8, 4)


def test_spec_round_trips_through_the_family_registry():
    space = ElasticCNN(in_channels=3, image_size=16, num_classes=5, widths=(0.5, 1.0))
    again = space_from_record({"family": "elastic-cnn", "space": space.spec()})
    assert again.spec() == space.spec()
    assert "elastic-cnn" in known_families()


@pytest.mark.parametrize("options, message", [
    ({"widths": (1.0, 0.5)}, "smallest first"),
    ({"kernels": (3, 4)}, "odd"),
    ({"stages": ()}, "stages"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_space_options_are_one_line_config_errors(options, message):
    with pytest.raises(sconce.ConfigError, match=message):
        ElasticCNN(**{"in_channels": 1, "image_size": 8, **options})


def test_check_rejects_unknown_missing_and_unoffered_options(space):
    choice = space.smallest()
    with pytest.raises(sconce.ConfigError, match="unknown dimension"):
        space.check({**choice, "stage9.width": 1.0})
    with pytest.raises(sconce.ConfigError, match="gives no"):
        space.check({k: v for k, v in choice.items() if k != "stage1.depth"})
    with pytest.raises(sconce.ConfigError, match="not an option"):
        space.check({**choice, "stage1.depth": 7})


def test_declared_family_builds_and_is_found_by_name():
    def build(choice):
        return nn.Sequential(nn.Conv2d(1, choice["width"], choice["kernel"],
                                       padding=choice["kernel"] // 2),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(choice["width"], 3))

    space = declare_family("test-family", {"width": (4, 8), "kernel": (3, 5)}, build)
    assert isinstance(space, SearchSpace)
    assert space.size == 4
    assert space_from_record({"family": "test-family"}) is space
    assert space.build(space.largest())(torch.randn(2, 1, 6, 6)).shape == (2, 3)


def test_unknown_family_is_a_clear_model_error():
    with pytest.raises(sconce.ModelError, match="not declared in this process"):
        space_from_record({"family": "no-such-family"})


def test_a_builder_that_returns_no_module_is_a_model_error():
    space = declare_family("test-bad-builder", {"w": (1, 2)}, lambda choice: 42)
    with pytest.raises(sconce.ModelError, match="not an nn.Module"):
        space.build(space.smallest())
