"""Gradual channel pruning: channels fade out during fine-tuning, then are removed exactly.

:class:`GradualChannelMasks` is a training callback. On the cubic schedule of
:mod:`sconce_prune.schedule` it asks a :class:`~sconce_prune.channel.pruner.ChannelPruner`
which channels to drop for the current fraction (channels dropped before stay dropped), and
zeroes every tensor that *produces* them (filters, biases, norm affines); after every
optimizer step it sets them back to zero. A dropped channel then carries exactly zero, so
removing it does not change what the model computes, and the network adapts to each removal
while it trains. Once the final fraction is reached (the schedule's ``end``), the channels
are removed for real, in the middle of training: the optimizer's parameters and their state
(Adam's moments) are sliced the same way, so training goes on, on the same schedule, at the
smaller width and its lower cost (not under DistributedDataParallel, whose wrapper holds the
parameters: there the channels stay masked until :meth:`GradualChannelMasks.finish`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> import sconce
    >>> from sconce_prune.channel.pruner import ChannelPruner
    >>> from sconce_prune.schedule import CubicSchedule
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(8)]
    >>> masks = GradualChannelMasks(ChannelPruner(net, torch.randn(1, 4), sparsity=0.5),
    ...                             CubicSchedule(0.0, 0.5, end=0.5, steps=2))
    >>> _ = sconce.train(net, torch.utils.data.DataLoader(data, batch_size=None), 1,
    ...                  callbacks=[masks], progress=False, device="cpu")
    >>> net[0].out_features, masks.finish().widths  # removed at half of training
    (8, [('0', 16, 8)])
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import torch

from sconce.train import TrainCallback, TrainState
from sconce_prune.channel.ops import removal_mask, shrunk
from sconce_prune.channel.pruner import ChannelPruner, Plan, PruneReport
from sconce_prune.schedule import CubicSchedule

logger = logging.getLogger(__name__)


class GradualChannelMasks(TrainCallback):
    """Drops channels on a schedule during training; :meth:`finish` removes them.

    Args:
        pruner: a one-step pruner of the (full-width) model being trained; its
            ``sparsity`` is the final fraction.
        schedule: when and how much (its ``final`` is the pruner's sparsity).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
        >>> masks = GradualChannelMasks(ChannelPruner(net, torch.randn(1, 4)),
        ...                             CubicSchedule(0.0, 0.5))
        >>> masks.plan.removed
        set()
    """

    def __init__(self, pruner: ChannelPruner, schedule: CubicSchedule) -> None:
        self.pruner = pruner
        self.schedule = schedule
        self.plan = Plan(set(), [])
        self._updates: set[int] = set()
        self._total = 0
        self._zeroed: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        self.report: PruneReport | None = None

    def on_train_begin(self, state: TrainState) -> None:
        self._total = max(1, state.total_steps)
        self._updates = set(self.schedule.pruning_steps(self._total))
        if 0 in self._updates:
            self._update(0)
            self._remove_if_final(0, state.optimizer)

    def on_step_end(self, state: TrainState) -> None:
        if self.report is not None:
            return
        if state.step in self._updates:
            self._update(state.step)
            self._remove_if_final(state.step, state.optimizer)
        self._hold()

    def _remove_if_final(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if step < max(self._updates) or torch.distributed.is_initialized():
            return
        self._hold()
        self.pruner.steps_done = self.pruner.steps
        self.report = self.pruner.remove(self.plan, _OptimizerFollower(optimizer))
        self._zeroed = []

    def _update(self, step: int) -> None:
        sparsity = self.schedule.sparsity_at(step, self._total)
        self.plan = self.pruner.plan(sparsity, keep=self.plan.removed)
        self._zeroed = self._producers(self.plan.removed)
        self._hold()
        logger.debug("step %d: %d channels dropped (%.3f)", step, len(self.plan.removed),
                     sparsity)

    def _producers(self, removed: set[int]) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """(parameter, dim, positions) of every producing tensor of a dropped channel."""
        graph = self.pruner.graph()
        gone = removal_mask(graph, removed)
        positions: dict[tuple[str, str, int], list[np.ndarray]] = defaultdict(list)
        for slot, roots in zip(graph.slots, graph.slot_roots(), strict=True):
            if slot.role == "out":
                positions[(slot.module, slot.tensor, slot.dim)].append(np.nonzero(gone[roots])[0])
        zeroed = []
        for (module, tensor, dim), found in positions.items():
            where = np.unique(np.concatenate(found))
            value = getattr(self.pruner.model.get_submodule(module), tensor)
            if where.size and isinstance(value, torch.Tensor):
                zeroed.append((value, dim, torch.as_tensor(where, device=value.device)))
        return zeroed

    def _hold(self) -> None:
        with torch.no_grad():
            for tensor, dim, where in self._zeroed:
                tensor.index_fill_(dim, where, 0.0)

    def finish(self) -> PruneReport:
        """Remove the dropped channels (the final fraction) from the model, in place, unless
        that happened during training; returns what was removed."""
        if self.report is not None:
            return self.report
        if self._total == 0 or self.plan.widths == []:  # never trained: choose now
            self.plan = self.pruner.plan(self.pruner.sparsity, keep=self.plan.removed)
            self._zeroed = self._producers(self.plan.removed)
        self._hold()
        self.pruner.steps_done = self.pruner.steps
        self.report = self.pruner.remove(self.plan)
        return self.report


class _OptimizerFollower:
    """Puts each resized parameter in the optimizer in place of the old one, with its state
    sliced like the parameter."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def __call__(self, old: torch.Tensor, new: torch.Tensor,
                 cuts: list[tuple[int, np.ndarray]]) -> None:
        for group in self.optimizer.param_groups:
            for index, param in enumerate(group["params"]):
                if param is old:
                    group["params"][index] = new
        state = self.optimizer.state.pop(old, None)
        if state is not None:
            self.optimizer.state[new] = {
                key: shrunk(value, cuts) if isinstance(value, torch.Tensor)
                and value.shape == old.shape else value for key, value in state.items()}
