"""Structured channel pruning that really removes channels, on any traceable architecture.

The pieces, one job each, from the bottom up: :mod:`.ids` (channel variables) and
:mod:`.tracing` (torch.fx + real shapes); :mod:`.groups` and :mod:`.structure` (what the
analysis found); :mod:`.builder` (the walk), whose rule table (:mod:`.rules`) holds the
rules of :mod:`.op_rules` and :mod:`.layer_rules`, the layers plugins describe and those
users teach with :func:`register_rule`; :mod:`.graph` (trace + walk); then
:mod:`.importance`, :mod:`.selection`, :mod:`.ops` (physical removal), :mod:`.verify`,
:mod:`.folding` (BatchNorm folding), :mod:`.record` (save/load without pickled code);
:mod:`.pruner` (:class:`ChannelPruner`) and :mod:`.technique` (``prune.channel``). Each
module imports only modules below it.

Example:
    >>> import torch
    >>> import sconce
    >>> from sconce_prune.channel import ChannelPruner
    >>> model = sconce.models.resnet18(num_classes=10, image_size=32)
    >>> pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32), sparsity=0.5, round_to=8)
    >>> report = pruner.prune()
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from sconce_prune.channel.builder import GraphBuilder, LayerCall
from sconce_prune.channel.config import ChannelPruneConfig
from sconce_prune.channel.folding import fold_batchnorms, recalibrate_batchnorms
from sconce_prune.channel.graph import build_dependency_graph
from sconce_prune.channel.groups import ChannelGroup
from sconce_prune.channel.importance import GroupTensor, GroupView
from sconce_prune.channel.layer_rules import ChannelMixingLayer
from sconce_prune.channel.macs import count_macs
from sconce_prune.channel.pruner import ChannelPruner, PruneReport, prune_channels
from sconce_prune.channel.rules import RuleTable, register_rule, unregister_rule
from sconce_prune.channel.structure import DependencyGraph
from sconce_prune.channel.technique import ChannelPruning

__all__ = [
    "ChannelGroup", "ChannelMixingLayer", "ChannelPruneConfig", "ChannelPruner",
    "ChannelPruning", "DependencyGraph", "GraphBuilder", "GroupTensor", "GroupView",
    "LayerCall", "PruneReport", "RuleTable", "build_dependency_graph", "count_macs",
    "fold_batchnorms", "prune_channels", "recalibrate_batchnorms", "register_rule",
    "unregister_rule",
]
