"""Tests for the reference model zoo (sconce.models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from sconce.models import (
    MODEL_FACTORIES,
    VGG,
    DemoCNN,
    MobileNetV2,
    ResNet,
    ViT,
    demo_cnn,
    mobilenet_v2,
    resnet,
    resnet18,
    vgg,
    vgg16,
    vit,
)

SHAPES = [(1, 28), (3, 32)]
CASES = [(name, c, s) for name in MODEL_FACTORIES for c, s in SHAPES] + [
    ("demo-cnn", 1, 8)
]
NUM_CLASSES = 7


def _build(name: str, in_channels: int, image_size: int) -> nn.Module:
    torch.manual_seed(0)
    factory = MODEL_FACTORIES[name]
    return factory(
        num_classes=NUM_CLASSES, in_channels=in_channels, image_size=image_size
    ).eval()


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names() -> None:
    assert set(MODEL_FACTORIES) == {
        "demo-cnn",
        "vgg",
        "vgg16",
        "resnet18",
        "mobilenetv2",
        "vit",
    }


@pytest.mark.parametrize(("name", "in_channels", "image_size"), CASES)
def test_forward_and_fx_trace(name: str, in_channels: int, image_size: int) -> None:
    model = _build(name, in_channels, image_size)
    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.no_grad():
        expected = model(x)
        traced = torch.fx.symbolic_trace(model)
        actual = traced(x)
    assert expected.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("name", list(MODEL_FACTORIES))
def test_torch_export(name: str) -> None:
    model = _build(name, 1, 28)
    x = torch.randn(2, 1, 28, 28)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def _conv_bn_relu_groups(model: nn.Module) -> list[list[str]]:
    groups = []
    for name, module in model.named_modules():
        children = list(module.named_children())
        if isinstance(module, nn.Sequential) and [type(m) for _, m in children] == [
            nn.Conv2d,
            nn.BatchNorm2d,
            nn.ReLU,
        ]:
            groups.append([f"{name}.{child}" for child, _ in children])
    return groups


@pytest.mark.parametrize("name", ["demo-cnn", "vgg", "resnet18"])
def test_conv_bn_relu_fusable_by_name(name: str) -> None:
    model = _build(name, 3, 32)
    groups = _conv_bn_relu_groups(model)
    assert groups
    fused = torch.ao.quantization.fuse_modules(model, groups)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


def test_no_inplace_relu() -> None:
    for name in MODEL_FACTORIES:
        model = _build(name, 3, 32)
        assert not any(getattr(m, "inplace", False) for m in model.modules()), name


def test_resnet18_imagenet_param_count() -> None:
    model = resnet18(num_classes=1000, image_size=224)
    assert _num_params(model) == 11_689_512
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem.modules())
    assert model.stem[0][0].kernel_size == (7, 7)


def test_resnet18_small_input_stem() -> None:
    model = resnet18(image_size=32)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_mobilenet_v2_imagenet_param_count() -> None:
    assert _num_params(mobilenet_v2(num_classes=1000, image_size=224)) == 3_504_872


def test_mobilenet_v2_small_input_resolution() -> None:
    model = mobilenet_v2(in_channels=1, image_size=28, width_mult=0.25).eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 1, 28, 28)).shape[-2:] == (4, 4)


def test_general_resnet_and_width_mult() -> None:
    small = resnet(depths=(1, 1), widths=(8, 16), in_channels=1, image_size=28)
    assert len(small.stages) == 2
    assert _num_params(mobilenet_v2(width_mult=0.5)) < _num_params(mobilenet_v2())


def test_vgg_classifier_uses_floored_size() -> None:
    model = vgg(in_channels=1, image_size=28)
    assert model.classifier[1].in_features == 128 * 3 * 3


def test_vgg16_drops_pools_for_small_images() -> None:
    model = vgg16(in_channels=1, image_size=28)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg16(image_size=32).modules()) == 5


@pytest.mark.parametrize(
    ("image_size", "patch_size"), [(32, 4), (28, 4), (8, 1), (224, 28), (14, 2)]
)
def test_vit_auto_patch_size(image_size: int, patch_size: int) -> None:
    assert vit(image_size=image_size, depth=1).patch_size == patch_size


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (demo_cnn, {"num_classes": 0}, "num_classes must be a positive integer"),
        (demo_cnn, {"in_channels": 2.5}, "in_channels must be a positive integer"),
        (demo_cnn, {"image_size": 1}, "image_size >= 2"),
        (vgg, {"image_size": 4}, "too small for 3 max-pools"),
        (vgg, {"widths": [32, "X"]}, "positive ints .* or 'M'"),
        (vgg, {"widths": ["M"]}, "at least one conv"),
        (resnet, {"depths": (2, 2), "widths": (64,)}, "equal length"),
        (resnet, {"depths": (2, 0), "widths": (8, 16)}, "must be a positive integer"),
        (mobilenet_v2, {"width_mult": 0}, "width_mult must be > 0"),
        (mobilenet_v2, {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        (
            vit,
            {"image_size": 30, "patch_size": 4},
            "patch_size=4 does not divide image_size=30",
        ),
        (vit, {"image_size": 31}, "cannot choose a patch size"),
        (vit, {"num_heads": 3}, "num_heads=3 must divide embed_dim=64"),
        (vit, {"mlp_ratio": 0}, "mlp_ratio must be > 0"),
    ],
)
def test_bad_arguments(
    factory: Callable[..., nn.Module], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_factories_return_their_classes() -> None:
    expected = {
        "demo-cnn": DemoCNN,
        "vgg": VGG,
        "vgg16": VGG,
        "resnet18": ResNet,
        "mobilenetv2": MobileNetV2,
        "vit": ViT,
    }
    for name, cls in expected.items():
        assert isinstance(MODEL_FACTORIES[name](image_size=32), cls)


def test_demo_cnn_learns_digits() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    perm = torch.randperm(len(y))
    train, test = perm[:1400], perm[1400:]
    model = demo_cnn(in_channels=1, image_size=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: extra threads only add overhead
    try:
        for _ in range(3):
            model.train()
            for batch in train[torch.randperm(len(train))].split(32):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.95
