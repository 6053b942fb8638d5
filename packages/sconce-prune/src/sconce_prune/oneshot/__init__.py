"""One-shot pruning from calibration data: SparseGPT, OBC (ExactOBS) and Wanda.

``prune.sparsegpt`` (optionally jointly with int4/int8 quantization), ``prune.obc`` (exact,
for small layers) and ``prune.wanda`` prune a trained model in one pass over a few calibration
samples, layer by layer, without fine-tuning; unstructured or N:M (2:4, 4:8).

Example:
    >>> import sconce
    >>> result = sconce.compress(model, data, recipe=[("prune.sparsegpt", {"n": 2, "m": 4})],
    ...                          finetune_epochs=0)  # doctest: +SKIP
"""

from __future__ import annotations

from sconce_prune.oneshot.config import OBCConfig, OneShotConfig, SparseGPTConfig, WandaConfig
from sconce_prune.oneshot.layers import candidate_layers, choose_layers
from sconce_prune.oneshot.obc import obc_prune
from sconce_prune.oneshot.sparsegpt import SparseGPTResult, SparseGPTSettings, sparsegpt_prune
from sconce_prune.oneshot.techniques import OBC, OneShotPruning, SparseGPT, Wanda
from sconce_prune.oneshot.wanda import wanda_prune, wanda_scores

__all__ = [
    "OBC", "OBCConfig", "OneShotConfig", "OneShotPruning", "SparseGPT", "SparseGPTConfig",
    "SparseGPTResult", "SparseGPTSettings", "Wanda", "WandaConfig", "candidate_layers",
    "choose_layers", "obc_prune", "sparsegpt_prune", "wanda_prune", "wanda_scores",
]
