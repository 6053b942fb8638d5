"""Structured channel pruning that really removes channels, on any traceable architecture.

The pieces, one job each: :mod:`.tracing` (torch.fx + real shapes), :mod:`.graph` with
:mod:`.layer_rules` / :mod:`.op_rules` (which channels are coupled), :mod:`.groups`,
:mod:`.importance`, :mod:`.selection`, :mod:`.ops` (physical removal), :mod:`.verify`,
:mod:`.folding` (BatchNorm folding), :mod:`.record` (save/load without pickled code) and
:mod:`.technique` (``prune.channel``).

Example:
    >>> import torch
    >>> import sconce
    >>> from sconce_prune.channel import prune_channels
    >>> model = sconce.models.resnet18(num_classes=10, image_size=32)
    >>> report = prune_channels(model, torch.randn(1, 3, 32, 32), sparsity=0.5, round_to=8)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from sconce_prune.channel.config import ChannelPruneConfig
from sconce_prune.channel.folding import fold_batchnorms, recalibrate_batchnorms
from sconce_prune.channel.graph import DependencyGraph, build_dependency_graph
from sconce_prune.channel.groups import ChannelGroup
from sconce_prune.channel.macs import count_macs
from sconce_prune.channel.pruner import PruneReport, prune_channels
from sconce_prune.channel.technique import ChannelPruning

__all__ = [
    "ChannelGroup", "ChannelPruneConfig", "ChannelPruning", "DependencyGraph", "PruneReport",
    "build_dependency_graph", "count_macs", "fold_batchnorms", "prune_channels",
    "recalibrate_batchnorms",
]
