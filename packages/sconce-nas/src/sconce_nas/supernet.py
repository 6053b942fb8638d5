"""Weight sharing: every member of a family runs on slices of the largest member's tensors.

The supernet is the largest member of a :class:`~sconce_nas.space.SearchSpace`. A smaller
member uses, for each of its parameters and buffers, the leading slice of the supernet's
tensor of the same name (channels, features, blocks) and the centre of its spatial
dimensions (a 3x3 kernel inside a 5x5 one). :meth:`Supernet.forward_subnet` runs the member's
own module structure through :func:`torch.func.functional_call` on views of the shared
tensors, so gradients reach the supernet and the output is exactly that of the standalone
member :meth:`Supernet.extract` returns.

Example:
    >>> import torch
    >>> from sconce_nas.elastic import ElasticCNN
    >>> space = ElasticCNN(in_channels=1, image_size=8, num_classes=3, stages=((8, 2),))
    >>> supernet = Supernet(space).eval()
    >>> choice = space.smallest()
    >>> x = torch.randn(2, 1, 8, 8)
    >>> torch.equal(supernet.forward_subnet(choice, x), supernet.extract(choice)(x))
    True
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from sconce.errors import ModelError
from sconce_nas.space import Choice, SearchSpace

logger = logging.getLogger(__name__)

SKELETON_CACHE = 64
"""Member structures (built on the meta device, no memory) kept for reuse."""


def shared_view(full: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The part of ``full`` that a tensor of ``shape`` shares: leading slices of the first two
    dimensions (output and input channels or features), the centre of the others (kernels).

    Example:
        >>> w = torch.arange(25.0).reshape(1, 1, 5, 5)
        >>> shared_view(w, (1, 1, 3, 3))[0, 0, 0].tolist()
        [6.0, 7.0, 8.0]
    """
    view = full
    for dim, (have, want) in enumerate(zip(full.shape, shape, strict=True)):
        if want != have:
            start = (have - want) // 2 if dim >= 2 else 0
            view = view.narrow(dim, start, want)
    return view


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


class Supernet(nn.Module):
    """The largest member of ``space``, whose tensors every other member shares.

    Args:
        space: the family.
        check_samples: random members whose names and shapes are checked against the
            supernet's at construction (the smallest one always is).

    Raises:
        ModelError: when a member has a tensor the supernet lacks or one larger than the
            supernet's (the family's options are not ordered smallest to largest).

    Example:
        >>> from sconce_nas.elastic import ElasticCNN
        >>> supernet = Supernet(ElasticCNN(in_channels=1, image_size=8, num_classes=2))
        >>> sum(p.numel() for p in supernet.parameters()) > 0
        True
    """

    def __init__(self, space: SearchSpace, check_samples: int = 4) -> None:
        super().__init__()
        self.space = space
        self.net = space.build(space.largest())
        self._skeletons: OrderedDict[str, nn.Module] = OrderedDict()
        rng = random.Random(0)
        for choice in [space.smallest(), *(space.sample(rng) for _ in range(check_samples))]:
            self._check(choice)

    def forward(self, x: Any) -> Any:
        """The largest member's output."""
        return self.net(x)

    def skeleton(self, choice: Mapping[str, Any]) -> nn.Module:
        """The member's module structure on the meta device (no memory, no initialisation)."""
        key = self.space.key(choice)
        module = self._skeletons.get(key)
        if module is None:
            with torch.device("meta"):
                module = self.space.build(choice)
            self._skeletons[key] = module
            if len(self._skeletons) > SKELETON_CACHE:
                self._skeletons.popitem(last=False)
        else:
            self._skeletons.move_to_end(key)
        return module

    def shared_tensors(self, choice: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Views into the supernet's tensors, one per tensor of the member, by name."""
        full = _named_tensors(self.net)
        return {name: shared_view(full[name], tensor.shape)
                for name, tensor in _named_tensors(self.skeleton(choice)).items()}

    def forward_subnet(self, choice: Mapping[str, Any], x: Any) -> Any:
        """Run member ``choice`` on the shared tensors (in this module's train/eval mode)."""
        skeleton = self.skeleton(choice).train(self.training)
        args = x if isinstance(x, tuple) else (x,)
        return functional_call(skeleton, self.shared_tensors(choice), args)

    def extract(self, choice: Mapping[str, Any]) -> nn.Module:
        """The standalone member ``choice`` with copies of the shared weights and statistics.

        The result shares no storage with the supernet; it is in eval mode.
        """
        device = next(self.net.parameters()).device
        model = self.space.build(choice).to(device)
        shared = self.shared_tensors(choice)
        model.load_state_dict({name: value.detach().clone() for name, value in shared.items()
                               if name in model.state_dict()})
        return model.eval()

    def _check(self, choice: Choice) -> None:
        full = _named_tensors(self.net)
        for name, tensor in _named_tensors(self.skeleton(choice)).items():
            if name not in full:
                raise ModelError(
                    f"family {self.space.family!r}: member {self.space.key(choice)} has tensor "
                    f"{name!r} that the largest member lacks; members must name their layers "
                    "like the largest one (options ordered smallest to largest)")
            if tensor.dim() != full[name].dim() or any(
                    a > b for a, b in zip(tensor.shape, full[name].shape, strict=True)):
                raise ModelError(
                    f"family {self.space.family!r}: {name!r} has shape {tuple(tensor.shape)} in "
                    f"member {self.space.key(choice)} but {tuple(full[name].shape)} in the "
                    "largest member; order each dimension's options smallest to largest")
