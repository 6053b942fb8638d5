"""Quality metrics of language models: perplexity and sentence-embedding cosine.

``perplexity`` is measured for adapters whose task is ``causal-lm``: ``exp`` of the mean
next-token cross-entropy over the test split's tokens. ``embedding_cosine`` is measured for
``embedding`` adapters: the mean cosine similarity between the model's sentence embeddings and
those of the adapter's reference model (the original, before compression) on the test split.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from sconce.context import Context
    >>> from sconce.data import Data
    >>> from sconce.textmodels import CausalLMAdapter
    >>> class Uniform(nn.Module):  # the same score for every one of 50 tokens
    ...     def forward(self, input_ids, use_cache=False):
    ...         return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 50)})()
    >>> loader = DataLoader(TensorDataset(torch.randint(0, 50, (4, 9))), batch_size=2)
    >>> ctx = Context(data=Data(test=loader), adapter=CausalLMAdapter())
    >>> round(Perplexity().measure(Uniform(), ctx), 3)
    50.0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sconce.metrics.base import Metric, MetricUnavailable
from sconce.runtime import model_device

if TYPE_CHECKING:
    from torch import nn

    from sconce.context import Context

__all__ = ["EmbeddingCosine", "Perplexity"]


class Perplexity(Metric):
    """``exp`` of the mean next-token cross-entropy on the test split (causal LMs)."""

    name, label, unit = "perplexity", "Perplexity", ""
    needs_data = True
    digits = 3
    tasks = ("causal-lm",)

    def measure(self, model: nn.Module, ctx: Context) -> float:
        if ctx.data is None:
            raise MetricUnavailable("no text to score")
        result = ctx.evaluate(model, ctx.measure_split)
        return math.exp(result.loss)


class EmbeddingCosine(Metric):
    """Mean cosine similarity of the sentence embeddings to the reference model's."""

    name, label, unit = "embedding_cosine", "Embedding cosine", ""
    higher_is_better = True
    needs_data = True
    digits = 4
    tasks = ("embedding",)

    def measure(self, model: nn.Module, ctx: Context) -> float:
        reference = getattr(ctx.adapter, "reference", None)
        if ctx.data is None or reference is None:
            raise MetricUnavailable("no sentences or no reference model to compare with")
        device = model_device(model, ctx.device)
        total, count = 0.0, 0
        modes = model.training, reference.training
        model.eval()
        reference.eval()
        try:
            with torch.inference_mode():
                for batch in ctx.data.batches(ctx.measure_split):
                    inputs, _ = ctx.adapter.split_batch(batch)
                    inputs = ctx.adapter.to_device(inputs, device)
                    ours = ctx.adapter.forward(model, inputs)
                    theirs = ctx.adapter.forward(reference, ctx.adapter.to_device(
                        inputs, model_device(reference, device)))
                    cosine = F.cosine_similarity(ours.float(), theirs.to(ours.device).float(),
                                                 dim=-1)
                    total += float(cosine.sum())
                    count += cosine.numel()
        finally:
            model.train(modes[0])
            reference.train(modes[1])
        if not count:
            raise MetricUnavailable("the test split is empty")
        return total / count
