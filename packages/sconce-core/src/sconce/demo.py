"""The built-in demo model: the demo CNN with weights trained on the digits dataset.

The weights ship inside the package (``weights/demo_cnn_digits.pt``, made by
``scripts/make_demo_checkpoint.py`` in the repository), so ``sconce compress`` with no
arguments compresses a trained model, as a user's would be.

Example:
    >>> model = demo_model()
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from sconce.errors import ModelError
from sconce.models import demo_cnn

DEMO_WEIGHTS = "demo_cnn_digits.pt"
DEMO_SHAPE = {"num_classes": 10, "in_channels": 1, "image_size": 8}


def demo_model(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    """The demo CNN for 1x8x8 digits, with the shipped trained weights.

    Raises:
        ModelError: asked for another input shape or class count (the weights fit digits).
    """
    asked = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    if asked != DEMO_SHAPE:
        raise ModelError(f"the demo model is trained for digits {DEMO_SHAPE}, not {asked}; "
                         "use --model demo-cnn for an untrained one of any shape")
    model = demo_cnn(**DEMO_SHAPE)
    weights = resources.files("sconce") / "weights" / DEMO_WEIGHTS
    if weights.is_file():
        with resources.as_file(weights) as path:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        raise ModelError(f"the demo weights {DEMO_WEIGHTS} are missing from this installation; "
                         "reinstall sconce-core")
    return model.eval()
