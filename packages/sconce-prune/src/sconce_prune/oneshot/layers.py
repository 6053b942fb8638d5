"""The layers a one-shot pruner solves: by default a transformer's block Linear layers.

Candidates are ``nn.Linear`` and ungrouped ``nn.Conv2d`` layers whose weight no other module
shares (a language model's head tied to its embedding is left alone). By default, when the
model is a stack of repeated blocks (an ``nn.ModuleList`` of same-type layers, as in every
transformer), the candidates inside those blocks are pruned: not the embeddings, not the LM
head, not a pooler. Other models (CNNs, MLPs) prune every candidate but the first and the
last, as the other pruning techniques do.

Example:
    >>> from torch import nn
    >>> net = nn.Module()
    >>> net.embed = nn.Linear(4, 4)
    >>> net.layers = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2))
    >>> net.head = nn.Linear(4, 2)
    >>> choose_layers(net, None, ())
    (['layers.0.0', 'layers.1.0'], ['embed', 'head'])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from sconce.errors import ConfigError
from sconce.layerwise import find_blocks, supported_layer
from sconce_prune.targets import _matches, _unknown_layer_message

logger = logging.getLogger(__name__)

__all__ = ["candidate_layers", "choose_layers"]


def candidate_layers(model: nn.Module) -> list[str]:
    """Linear and ungrouped Conv2d layers (exactly those types) with unshared weights.

    Example:
        >>> emb = nn.Embedding(5, 3); head = nn.Linear(3, 5)
        >>> head.weight = emb.weight
        >>> candidate_layers(nn.ModuleDict({"emb": emb, "head": head, "fc": nn.Linear(3, 3)}))
        ['fc']
    """
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return [name for name, module in model.named_modules()
            if type(module) in (nn.Linear, nn.Conv2d) and supported_layer(module)
            and owners.get(id(module.weight), 0) == 1]


def _select(names: Sequence[str], patterns: Sequence[str], what: str) -> list[str]:
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if _matches(n, pattern)]
        if not matched:
            raise ConfigError(_unknown_layer_message(pattern, list(names)).replace(
                "skip_layers", what, 1))
        chosen += [n for n in matched if n not in chosen]
    return chosen


def choose_layers(model: nn.Module, layers: Sequence[str] | None, skip: Sequence[str]
                  ) -> tuple[list[str], list[str]]:
    """The layers to prune and the candidates left dense, both in registration order.

    Raises:
        ConfigError: a name or glob matches no candidate, or nothing is left to prune.
    """
    candidates = candidate_layers(model)
    if not candidates:
        raise ConfigError("the model has no Linear or ungrouped Conv2d layer to prune")
    if layers is not None:
        chosen = set(_select(candidates, layers, "layers"))
    else:
        blocks = find_blocks(model, candidates)
        inside = [n for n in candidates if any(n.startswith(b + ".") for b in blocks)]
        if inside:
            chosen = set(inside)
        elif len(candidates) > 2:
            chosen = set(candidates[1:-1])
        else:
            chosen = set(candidates)
    chosen -= set(_select(candidates, skip, "skip_layers"))
    if not chosen:
        raise ConfigError("no layer is left to prune; name layers to prune with 'layers' or "
                          "skip fewer")
    return ([n for n in candidates if n in chosen], [n for n in candidates if n not in chosen])
