"""sconce-nas: architecture search under deployment constraints, discovered through the
``sconce`` entry point.

Train a weight-sharing supernet once (sandwich rule, in-place distillation, through the
core's training loop), then search it with Optuna's NSGA-II for the most accurate subnet that
meets limits on latency (a lookup table measured on this machine), MACs, params and size;
candidates are scored here or on Ray workers. The chosen subnet is a standalone module,
fine-tuned, rebuilt by :func:`sconce.load` from its recorded choice.

Example:
    >>> import sconce_nas
    >>> space = sconce_nas.ElasticCNN(in_channels=1, image_size=28, num_classes=10)
    >>> space.largest()["stage2.depth"]
    3
    >>> result = sconce_nas.search("fashion-mnist", {"target_latency": "2x"},
    ...                            reference=vgg, workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

from sconce_nas.api import search
from sconce_nas.config import NASConfig
from sconce_nas.costs import Costs, InfeasibleConstraint, Limits
from sconce_nas.deploy import deploy, recalibrate_batchnorms
from sconce_nas.elastic import ElasticCNN
from sconce_nas.latency import LatencyCheck, LatencyTable
from sconce_nas.nsga import Candidate, SearchOutcome, run_search
from sconce_nas.run import NASResult
from sconce_nas.space import (
    Dimension,
    SearchSpace,
    declare_family,
    known_families,
    register_family,
)
from sconce_nas.supernet import Supernet
from sconce_nas.technique import NASSearch
from sconce_nas.training import load_supernet, save_supernet, supernet_info, train_supernet

__version__ = "0.1.0"

__all__ = [
    "Candidate", "Costs", "Dimension", "ElasticCNN", "InfeasibleConstraint", "LatencyCheck",
    "LatencyTable", "Limits", "NASConfig", "NASResult", "NASSearch", "SearchOutcome",
    "SearchSpace", "Supernet", "__version__", "declare_family", "deploy", "known_families",
    "load_supernet", "recalibrate_batchnorms", "register_family", "run_search", "save_supernet",
    "search", "supernet_info", "train_supernet",
]
