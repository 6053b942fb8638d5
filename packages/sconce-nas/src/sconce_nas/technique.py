"""``nas.search``: architecture search as a sconce technique (kind ``search``).

``apply`` ignores the structure of the model it is given (the search builds its own family
from the data's shape) but measures it for ratio targets: ``--target-latency 2x`` means half
of that model's batch-1 latency. It returns the chosen subnet, fine-tuned and deployed, and
leaves a record (family, space, choice) from which ``restore`` rebuilds that subnet, so
:func:`sconce.load` never unpickles code. Later stages (pruning, quantization) take the
subnet like any model.

Example:
    >>> import sconce
    >>> sconce.get_technique("nas.search").kind
    'search'
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from sconce.context import Context
from sconce.technique import Technique
from sconce_nas.config import NASConfig
from sconce_nas.deploy import deploy
from sconce_nas.run import run_nas
from sconce_nas.space import space_from_record

logger = logging.getLogger(__name__)


def build_member(record: dict[str, Any]) -> nn.Module:
    """The deployed structure of the subnet a record describes (fresh weights).

    Example:
        >>> record = {"family": "elastic-cnn", "channels_last": False,
        ...           "space": {"in_channels": 1, "image_size": 8, "num_classes": 2,
        ...                     "stages": [[8, 1]]},
        ...           "choice": {"stage1.width": 0.5, "stage1.depth": 1, "stage1.kernel": 3,
        ...                      "stage1.expansion": 2}}
        >>> type(build_member(record).stem[1]).__name__   # BatchNorm folded
        'Identity'
    """
    space = space_from_record(record)
    model = space.build(space.check(record["choice"]))
    return deploy(model, channels_last=bool(record.get("channels_last")), inplace=True)


class NASSearch(Technique):
    """Architecture search: the most accurate subnet of a weight-sharing supernet that meets
    the latency, MACs, params and size limits.

    Example:
        >>> NASSearch().name
        'nas.search'
    """

    name = "nas.search"
    kind = "search"
    Config = NASConfig

    def apply(self, model: nn.Module, config: NASConfig,
              ctx: Context) -> nn.Module:
        """Search, fine-tune and deploy a subnet; ``model`` is the reference for ratios."""
        outcome = run_nas(ctx, config, reference=model)
        ctx.set_restore_record(outcome.record)
        for key, value in outcome.notes().items():
            ctx.note(key, value)
        return outcome.model

    def restore(self, model: nn.Module, config: NASConfig, record: dict[str, Any]
                ) -> nn.Module:
        """The chosen subnet's structure (``model``, the original architecture, is unused)."""
        return build_member(record)
